"""Recipes: precedence defaults < recipe < flags, validation, listing."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig, load_recipe, resolve_config
from finetune.errors import FinetuneError

runner = CliRunner()


def _recipe(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_precedence_defaults_then_recipe_then_flags(tmp_path):
    recipe = _recipe(tmp_path, "# Mine: for tests.\nlr: 0.05\nepochs: 7\n")
    cli = {"backbone": "test_resnet", "data": tmp_path, "lr": 0.2, "epochs": 5, "batch_size": 32}
    config, sources = resolve_config(cli, explicit={"backbone", "data", "lr"}, recipe=recipe)
    assert config.lr == 0.2 and sources["lr"] == "command line"  # flag beats recipe
    assert config.epochs == 7 and sources["epochs"] == "recipe mine"  # recipe beats default
    assert config.batch_size == 32 and sources["batch_size"] == "default"


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    with pytest.raises(FinetuneError, match="unknown key 'batchsize'; did you mean 'batch_size'"):
        load_recipe(_recipe(tmp_path, "batchsize: 8\n"))


def test_bad_value_names_the_allowed_range_or_choices(tmp_path):
    with pytest.raises(FinetuneError, match="lr: Input should be greater than 0"):
        load_recipe(_recipe(tmp_path, "lr: -1\n"))
    with pytest.raises(FinetuneError, match="'adamw', 'adam', 'sgd' or 'rmsprop'"):
        load_recipe(_recipe(tmp_path, "optimizer: lamb\n"))


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(FinetuneError, match="recipes: .*linear-probe") as refused:
        load_recipe("no-such-recipe")
    assert "did you mean" not in str(refused.value)  # nothing near: no guess
    with pytest.raises(FinetuneError, match="did you mean 'linear-probe'\\? recipes: "):
        load_recipe("linear-prob")


def test_run_records_where_each_value_came_from(tiny_data, tmp_path, run_args):
    recipe = _recipe(tmp_path, "# Mine: for tests.\nlr: 0.02\nweight_decay: 0.0\n")
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--recipe", recipe, "--lr", "0.03"))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.03 and saved["sources"]["lr"] == "command line"
    assert saved["weight_decay"] == 0.0 and saved["sources"]["weight_decay"] == "recipe mine"
    assert saved["sources"]["optimizer"] == "default"
    assert RunConfig.from_yaml(out / "config.yaml").lr == 0.03


def test_recipes_command_lists_and_shows():
    listed = runner.invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "linear-probe" in listed.output
    shown = runner.invoke(app, ["recipes", "show", "linear-probe"])
    assert shown.exit_code == 0 and "freeze" in shown.output
    assert runner.invoke(app, ["recipes", "show", "nope"]).exit_code == 2


@pytest.mark.parametrize("name", ["linear-probe", "finetune-large"])
def test_a_shown_recipe_saved_to_a_file_is_the_recipe(name, tmp_path):
    """`recipes show NAME > mine.yaml` into a pipe (80 columns, or fewer): the same settings, and a recipe."""
    shown = runner.invoke(app, ["recipes", "show", name], env={"COLUMNS": "40"})
    assert shown.exit_code == 0, shown.output
    mine = tmp_path / "mine.yaml"
    mine.write_text(shown.output)
    assert yaml.safe_load(mine.read_text()) == load_recipe(name).values
    assert load_recipe(str(mine)).values == load_recipe(name).values


def test_missing_backbone_is_required_here_or_in_the_recipe(tiny_data, tmp_path):
    result = runner.invoke(app, ["run", "--data", str(tiny_data), "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--backbone is required" in result.output


SHIPPED = ("distill", "finetune-large", "linear-probe", "regularized")


def test_the_shipped_recipes_are_all_there_with_descriptions():
    from finetune.config import list_recipes

    recipes = {r.name: r for r in list_recipes()}
    assert tuple(sorted(recipes)) == SHIPPED
    assert all(r.description and "When:" in r.notes for r in recipes.values())


@pytest.fixture(scope="module")
def teacher_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    args = ["run", "--backbone", "test_resnet", "--data", str(tiny_data), "--output", str(out), "--weights", "none",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress",
            "--no-export"]
    assert runner.invoke(app, args).exit_code == 0
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_runs_a_tiny_step(name, tiny_data, tmp_path, run_args, teacher_run):
    out = tmp_path / name
    extra = ["--teacher", str(teacher_run)] if name == "distill" else []
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--recipe", name, "--epochs", "2",
                                         "--limit-train-batches", "1", "--limit-val-batches", "1", *extra))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    recipe = load_recipe(name)
    for key, value in recipe.values.items():
        if key not in ("epochs", "freeze_until"):  # --epochs is given here; auto is resolved to a layer
            assert saved[key] == value and saved["sources"][key] == f"recipe {name}", key
