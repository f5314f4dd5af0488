"""Studies end to end on tiny data: pruning, divergence, bad settings, resuming, outputs, best.yaml."""
from __future__ import annotations

import csv
import datetime
import io
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState
from rich.console import Console
from typer.testing import CliRunner

import finetune
from finetune.cli import app
from finetune.config import RunConfig, load_recipe
from finetune.search import study as study_module
from finetune.search.space import Param


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _rows(study_dir):
    with open(study_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _stage1(study_dir) -> optuna.Study:
    return optuna.load_study(study_name=f"{study_dir.name}-stage1", storage=f"sqlite:///{study_dir / 'study.db'}")


def test_a_pruned_trial_is_stopped_after_its_first_validation(base_config, tmp_path):
    # ThresholdPruner(lower=2) prunes any top-1 below 2, i.e. at the first report.
    result = finetune.tune(base_config(epochs=3), {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}, trials=1, stages=1,
                           output=tmp_path / "s", pruner=ThresholdPruner(lower=2.0), console=_quiet())
    [trial] = _stage1(result.study_dir).trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["outcome"] == "pruned"
    assert trial.user_attrs["epochs_run"] == 1 and list(trial.intermediate_values) == [0]
    with open(tmp_path / "s" / "trials" / "stage1-000" / "metrics.csv", newline="") as f:
        assert {row["epoch"] for row in csv.DictReader(f)} == {"1"}  # the run stopped after epoch 1 of 3
    assert result.best_yaml is None and _rows(result.study_dir)[0]["outcome"] == "pruned"


def test_diverged_and_failed_trials_are_recorded_and_the_study_goes_on(base_config, tmp_path, monkeypatch):
    """lr 1000 explodes (diverged, PRUNED); a layer test_resnet lacks is a bad setting (FAIL with its
    reason); the third trial still runs and completes."""
    monkeypatch.setattr("finetune.training.callbacks.divergence.WINDOW", 3)  # the guard judges 2-epoch trials
    out = tmp_path / "s"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    study = optuna.create_study(study_name="s-stage1", storage=storage, direction="maximize")
    for params in ({"lr": 1000.0, "freeze_until": None}, {"lr": 1e-3, "freeze_until": "layer9"},
                   {"lr": 1e-3, "freeze_until": None}):
        study.enqueue_trial(params)
    space = {"lr": Param("lr", "choice", choices=(1000.0, 1e-3)),
             "freeze_until": Param("freeze_until", "choice", choices=(None, "layer9"))}
    result = finetune.tune(base_config(), space, trials=3, stages=1, output=out, pruner="none", console=_quiet())
    trials = _stage1(out).trials
    assert [t.user_attrs["outcome"] for t in trials] == ["diverged", "failed", "complete"]
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert "training diverged" in trials[0].user_attrs["reason"]
    assert "'layer9' is not a layer of test_resnet" in trials[1].user_attrs["reason"]
    assert result.best_trial == (1, 2)
    assert [r["outcome"] for r in _rows(out)] == ["diverged", "failed", "complete"]


def test_rerunning_continues_the_study_up_to_n_trials(base_config, tmp_path):
    space = {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}
    args = dict(stages=1, output=tmp_path / "s", pruner="none", console=_quiet())
    finetune.tune(base_config(epochs=1), space, trials=2, **args)
    finetune.tune(base_config(epochs=1), space, trials=2, **args)  # the same command: nothing left to run
    assert len(_stage1(tmp_path / "s").trials) == 2
    finetune.tune(base_config(epochs=1), space, trials=3, **args)
    trials = _stage1(tmp_path / "s").trials
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(_rows(tmp_path / "s")) == 3


def test_a_rerun_with_another_space_is_refused(base_config, tmp_path):
    args = dict(trials=1, stages=1, output=tmp_path / "s", pruner="none", console=_quiet())
    finetune.tune(base_config(epochs=1), {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}, **args)
    with pytest.raises(finetune.errors.FinetuneError, match="started with other search space"):
        finetune.tune(base_config(epochs=1), {"lr": Param("lr", "log-uniform", 1e-4, 1e-2)}, **args)


@pytest.fixture(scope="module")
def two_stage_study(tiny_data, tmp_path_factory):
    """A 3-trial, two-stage study: 2 short random trials (1 epoch of 3), then 1 full TPE trial."""
    out = tmp_path_factory.mktemp("study") / "s"
    config = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, batch_size=8, workers=0,
                       epochs=3, precision="32", progress=False)
    console = Console(file=io.StringIO(), width=200)
    result = finetune.tune(config, trials=3, output=out, console=console)
    return result, console.file.getvalue()


def test_two_stages_short_then_full_in_a_narrowed_space(two_stage_study):
    result, text = two_stage_study
    rows = _rows(result.study_dir)
    assert [(r["stage"], r["epochs"]) for r in rows] == [("1", "1"), ("1", "1"), ("2", "3")]
    stage2 = optuna.load_study(study_name="s-stage2", storage=f"sqlite:///{result.study_dir / 'study.db'}")
    narrowed = stage2.user_attrs["space"]["lr"]["log-uniform"]
    assert 1e-4 <= narrowed[0] < narrowed[1] <= 3e-2 and narrowed[1] / narrowed[0] < 300  # the whole range is 300x
    stage1 = _stage1(result.study_dir)
    assert stage2.trials[0].params == stage1.best_trial.params  # stage 2 opens with stage 1's best, full length
    assert "Search space (stage 1)" in text and "Stage 2 space" in text and "Estimate: one batch of 8" in text
    assert "3/3 done" in text


def test_the_first_trial_runs_the_base_settings(two_stage_study):
    result, _ = two_stage_study
    first = _rows(result.study_dir)[0]
    defaults = RunConfig.model_fields
    assert (float(first["lr"]) == defaults["lr"].default
            and float(first["weight_decay"]) == defaults["weight_decay"].default)
    assert first["freeze_until"] == "auto" and first["augment"] == "auto" and float(first["mixup"]) == 0.0


def test_outputs_of_a_study(two_stage_study):
    result, text = two_stage_study
    columns = list(_rows(result.study_dir)[0])
    assert columns[:8] == ["stage", "trial", "state", "outcome", "val_acc1", "epochs", "epochs_run", "wall_s"]
    assert ({"lr", "backbone_lr_mult", "weight_decay", "freeze_until", "augment", "label_smoothing", "mixup"}
            <= set(columns))
    for name in ("history", "params", "importances"):
        assert result.plots[name].stat().st_size > 1000 and result.plots[name].suffix == ".png"
    assert "Best trials" in text and result.best_trial[0] == 2


def test_best_yaml_is_a_recipe_that_reproduces_the_best_trial(two_stage_study, tiny_data, tmp_path):
    result, _ = two_stage_study
    recipe = load_recipe(str(result.best_yaml))
    assert "data" not in recipe.values and recipe.values["epochs"] == 3
    run_dir = tmp_path / "again"
    cli = CliRunner().invoke(app, ["run", "--recipe", str(result.best_yaml), "--data", str(tiny_data),
                                   "--output", str(run_dir), "--no-progress", "--no-export"])
    assert cli.exit_code == 0, cli.output
    again = yaml.safe_load((run_dir / "config.yaml").read_text())
    best = yaml.safe_load((result.best_config.output / "config.yaml").read_text())  # as the best trial resolved them
    for key in ("lr", "backbone_lr_mult", "weight_decay", "freeze_until", "augment", "label_smoothing", "mixup",
                "epochs"):
        assert again[key] == best[key], key
    # Same seed, same settings: the same run (losses and accuracies; timings differ).
    rows = _losses(run_dir / "metrics.csv")
    assert any(row.get("val/acc1") for row in rows)
    assert rows == _losses(result.best_config.output / "metrics.csv")


def _losses(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if "loss" in k or "acc" in k} for row in csv.DictReader(f)]


def test_final_run_trains_the_best_for_the_full_epochs_and_scores_it_on_test(base_config, tmp_path):
    from finetune.data.synthetic import make_image_folder

    data = make_image_folder(tmp_path / "data", "shapes", train_per_class=8, val_per_class=4, test_per_class=4, size=32,
                             classes=("circle", "square", "triangle"), seed=0)
    space = {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}
    result = finetune.tune(base_config(data=data, epochs=2), space, trials=3, output=tmp_path / "s", final_run=True,
                           pruner="none", console=_quiet())
    assert result.best_config.epochs == 2  # the best trial is a stage-2 (full-length) trial
    config = yaml.safe_load((result.final_run / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["lr"] == pytest.approx(result.best_config.lr)
    assert (result.final_run / "model" / "model.onnx").is_file()
    split, top1 = result.final_top1
    assert split == "test" and 0.0 <= top1 <= 1.0
    assert (result.final_run / "eval-test" / "metrics.json").is_file()


def test_timeout_stops_starting_trials_and_the_estimate_says_so(base_config, tmp_path):
    console = _quiet()
    result = finetune.tune(base_config(), {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}, trials=3, timeout=1e-6,
                           output=tmp_path / "s", console=console)
    text = console.file.getvalue()
    assert "--timeout 1e-06 s stops starting trials before that" in text
    assert result.best_yaml is None and _rows(tmp_path / "s") == [] and "No trial completed" in text


def test_a_trial_another_worker_is_finishing_is_running_in_the_outputs(tmp_path):
    """A worker writes the outcome a moment before it tells the storage the trial ended; a second
    worker finishing the study in that moment must not plot it as complete with no value."""
    from finetune.search import outputs

    study = optuna.create_study(direction="maximize")
    done = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
    done.set_user_attr("outcome", "complete")
    study.tell(done, 0.5)
    ending = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
    ending.set_user_attr("outcome", "complete")  # not yet told
    rows = outputs.trial_rows([(1, study)])
    assert [r["outcome"] for r in rows] == ["complete", "running"]
    assert outputs.plot_history(rows, tmp_path / "history.png").exists()


def _stage1_of(results):
    """An in-memory stage-1 study holding completed trials: [(params, val top-1), ...]."""
    study = optuna.create_study(direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "augment": optuna.distributions.CategoricalDistribution(("auto", "none", "light"))}
    for params, value in results:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return study


_SPACE2 = {"lr": Param("lr", "log-uniform", 1e-4, 1e-1),
           "augment": Param("augment", "choice", choices=("auto", "none", "light"))}


@pytest.mark.parametrize("slots, expected", [(4, ["best of stage 1", "base settings"]), (1, ["best of stage 1"])])
def test_stage_2_reruns_the_base_at_full_length_when_it_was_not_stage_1_s_best(base_config, slots, expected):
    """Base lr 1e-3/auto lost stage 1 to lr 1e-2/light: stage 2 runs both, and its range reaches both."""
    from finetune.search.study import _stage2_space

    base = base_config(lr=1e-3, augment="auto")
    stage1 = _stage1_of([({"lr": 1e-3, "augment": "auto"}, 0.5), ({"lr": 1e-2, "augment": "light"}, 0.7),
                         ({"lr": 1e-4, "augment": "none"}, 0.1), ({"lr": 3e-2, "augment": "none"}, 0.2)])
    stage2 = optuna.create_study(direction="maximize")
    narrowed = _stage2_space(stage2, stage1, _SPACE2, base, slots)
    waiting = stage2.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["enqueued"] for t in waiting] == expected
    fixed = [t.system_attrs["fixed_params"] for t in waiting]  # what each enqueued trial will run
    assert fixed == [{"lr": 1e-2, "augment": "light"}, {"lr": 1e-3, "augment": "auto"}][:len(expected)]
    assert narrowed["lr"].contains(1e-3) and narrowed["lr"].contains(1e-2) and narrowed["lr"].low > 1e-4
    assert set(narrowed["augment"].choices) == {"auto", "light"}


def test_stage_2_runs_the_base_once_when_it_won_stage_1(base_config):
    from finetune.search.study import _stage2_space

    stage1 = _stage1_of([({"lr": 1e-3, "augment": "auto"}, 0.9), ({"lr": 1e-2, "augment": "light"}, 0.7)])
    stage2 = optuna.create_study(direction="maximize")
    _stage2_space(stage2, stage1, _SPACE2, base_config(lr=1e-3, augment="auto"), 4)
    assert [t.user_attrs["enqueued"] for t in stage2.get_trials(states=(TrialState.WAITING,))] == ["best of stage 1"]


def test_the_study_says_which_stage_1_trials_stay_near_the_base(two_stage_study):
    _, text = two_stage_study
    assert "Stage 1: trial 0 runs the base settings; trial 1 draws one or two of them" in text


def test_the_base_settings_stay_unless_beaten_by_more_than_one_standard_error():
    """Base at 0.80 on 100 val images: standard error sqrt(0.8 * 0.2 / 100) = 0.04."""
    from finetune.search.study import _best

    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}

    def study_of(*results):
        study = optuna.create_study(direction="maximize")
        for lr, value in results:
            study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dist, value=value))
        return study

    base = {"lr": 1e-3}
    close = study_of((1e-2, 0.83), (1e-3, 0.80), (3e-3, 0.70))
    stage, trial = _best({1: optuna.create_study(direction="maximize"), 2: close}, base, 100)
    assert stage == 2 and trial.params == base  # 0.83 is within 0.04 of 0.80
    assert _best({2: study_of((1e-2, 0.85), (1e-3, 0.80))}, base, 100)[1].params == {"lr": 1e-2}  # beyond it
    assert _best({2: study_of((1e-2, 0.83), (1e-3, 0.80))}, base, 10_000)[1].params == {"lr": 1e-2}  # se 0.004
    assert _best({2: study_of((1e-2, 0.80), (1e-3, 0.80))}, base, 0)[1].params == base  # a tie, with no count
    assert _best({2: close}, None, 100)[1].params == {"lr": 1e-2}  # no base in the space: the best on val


@pytest.mark.parametrize("limit, images", [(1.0, 500), (2, 128), (0.5, 256), (100, 500)])
def test_the_standard_error_counts_the_val_images_a_trial_is_scored_on(limit, images):
    """500 val images in batches of 64 (8 batches); --limit-val-batches 2 scores 128 of them, 0.5 four batches."""
    from finetune.search.study import validated_images

    assert validated_images(500, limit, 64) == images


def test_the_default_study_folder_is_named_by_date_and_backbone_as_one_safe_folder(monkeypatch, tmp_path):
    """studies/2024-03-05-<backbone>, with the ':' and '/' of hub and torchvision names made '_': one folder
    per day and backbone, never a nested path."""
    class March5(datetime.date):
        @classmethod
        def today(cls):
            return cls(2024, 3, 5)

    monkeypatch.setattr(study_module, "date", March5)
    hub = study_module.default_study_dir("hf-hub:timm/resnet50.a1_in1k")
    assert hub == Path("studies/2024-03-05-hf-hub_timm_resnet50.a1_in1k") and len(hub.parts) == 2
    assert study_module.default_study_dir("tv:resnet18", tmp_path) == tmp_path / "2024-03-05-tv_resnet18"


def test_tune_from_python_prints_nothing_unless_given_a_reporter(base_config, tmp_path, capfd, caplog):
    space = {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}
    capfd.readouterr()
    with caplog.at_level("INFO", logger="finetune"):
        result = finetune.tune(base_config(epochs=1), space, trials=1, stages=1, output=tmp_path / "s", pruner="none")
    assert capfd.readouterr() == ("", "") and result.best_value is not None
    told = [r.getMessage() for r in caplog.records if r.name == "finetune"]
    assert any(line.startswith(f"Best: stage 1 trial 0, val top-1 {result.best_value:.4f}") for line in told)
    said = io.StringIO()
    finetune.tune(base_config(epochs=1), space, trials=1, stages=1, output=tmp_path / "s", pruner="none",
                  reporter=finetune.ConsoleReporter(Console(file=said, width=200)))  # the study is done: the summary
    assert f"Best: stage 1 trial 0, val top-1 {result.best_value:.4f}" in said.getvalue()
    assert capfd.readouterr() == ("", "")
