"""Crafted bundles, checkpoints, ONNX graphs, recipes and run configs: refused in one line, offline.

Each file here is made from a real run of the toolkit and then edited the way an attacker (or a bad
copy) would: a hub backbone in config.json, JSON nested 100000 deep, an ONNX tensor whose data lives
in ../../etc/passwd, YAML with python/object tags, a checkpoint cut short or carrying a pickled call.
Every network entry point is made to fail loudly and record the attempt, so "offline" is checked,
not assumed; files that would run a command name a marker file that must never appear.
"""
from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.errors import FinetuneError

from bad_inputs import (
    HUB_BACKBONE,
    checkpoint_naming,
    edited_bundle,
    point_onnx_at,
    truncated_copy,
    write_alias_bomb_yaml,
    write_nested_json,
    write_nested_yaml,
    write_pickled_call_checkpoint,
    write_python_tag_yaml,
)

runner = CliRunner()
# A refusal reads one small file and checks a name: well under a second. The bound leaves room for a
# busy 2-core machine; a hub fetch takes 5 s offline (HF_HUB_OFFLINE) and about 30 s of retries online.
QUICK_S = 3.0
HUB_NAMES = (HUB_BACKBONE, "hf_hub:attacker/evil-model")
OUTSIDE = ("../../etc/passwd", "/etc/passwd")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A real run of the toolkit: checkpoints/best.ckpt, last.ckpt, config.yaml and the model/ bundle."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    result = runner.invoke(app, ["run", "--backbone", "test_resnet", "--weights", "none", "--data", str(tiny_data),
                                 "--output", str(out), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                                 "--workers", "0", "--precision", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way out to the network records the attempt and fails; the test asserts the list stays empty."""
    import huggingface_hub
    import huggingface_hub.file_download
    import timm.models._factory
    import timm.models._hub
    import torch.hub

    attempts: list[str] = []

    def blocked(what: str):
        def fail(*args, **kwargs):
            attempts.append(f"{what}{args[:2]!r}")
            raise OSError(f"the test blocks the network ({what})")
        return fail

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for owner, name in ((socket.socket, "connect"), (socket, "create_connection"), (socket, "getaddrinfo"),
                        (urllib.request, "urlopen"), (huggingface_hub, "hf_hub_download"),
                        (huggingface_hub.file_download, "hf_hub_download"), (timm.models._hub, "hf_hub_download"),
                        (timm.models._factory, "load_model_config_from_hf"),
                        (torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file")):
        monkeypatch.setattr(owner, name, blocked(f"{getattr(owner, '__name__', owner)}.{name}"))
    return attempts


def _refused(call, *args, **kwargs) -> FinetuneError:
    """The error `call` raises: a FinetuneError of one line, raised within QUICK_S."""
    start = time.perf_counter()
    with pytest.raises(FinetuneError) as info:
        call(*args, **kwargs)
    took = time.perf_counter() - start
    assert took < QUICK_S, f"took {took:.1f} s"
    assert "\n" not in str(info.value), str(info.value)
    return info.value


def _cli_error(*args: str) -> str:
    """The one `Error:` line of a CLI command that must exit with status 2 and no traceback."""
    result = runner.invoke(app, list(args))
    out = result.output  # stdout and stderr, as a terminal shows them
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (out, result.exception)
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return "".join(errors[0].split())  # without the spaces rich may add when wrapping


def _squash(text: object) -> str:
    return "".join(str(text).split())


def _without(error: object, folder: Path) -> str:
    """The message with `folder` written as DIR: the test's own folder names must not satisfy a check."""
    return str(error).replace(str(folder), "DIR")


# ----- a bundle or checkpoint that names a hub model: refused before anything is fetched -----------------

@pytest.mark.parametrize("name", HUB_NAMES)
def test_eager_predictor_refuses_a_bundle_naming_a_hub_model(run_dir, tmp_path, network, name):
    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "evil", backbone=name)
    error = _refused(Predictor.load, bundle, backend="eager")
    assert name in str(error) and str(bundle) in _squash(error)
    assert network == []


def test_teacher_bundle_naming_a_hub_model_ends_the_run_in_one_line(run_dir, tmp_path, tiny_data, network):
    bundle = edited_bundle(run_dir / "model", tmp_path / "evil", backbone=HUB_BACKBONE)
    line = _cli_error("run", "--backbone", "test_resnet", "--weights", "none", "--data", str(tiny_data),
                      "--output", str(tmp_path / "student"), "--teacher", str(bundle), "--image-size", "32",
                      "--epochs", "1", "--workers", "0", "--no-progress", "--no-export")
    assert HUB_BACKBONE in line and "--teacher" in line
    assert network == []


@pytest.fixture
def hub_checkpoint(run_dir, tmp_path) -> Path:
    """best.ckpt of the run, naming the hub model as its backbone."""
    return checkpoint_naming(run_dir / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", HUB_BACKBONE)


def _load_teacher(path: Path):
    from finetune.training.teacher import load_teacher

    return load_teacher(path, ["circle", "square", "triangle"])


def _from_checkpoint(path: Path):
    from finetune.training.module import FinetuneModule

    return FinetuneModule.from_checkpoint(path)


def _load_trained(path: Path):
    from finetune.training.checkpoint import load_trained

    return load_trained(path)


def _predictor(path: Path):
    from finetune.inference import Predictor

    return Predictor.from_path(path)


@pytest.mark.parametrize("load", [_load_teacher, _from_checkpoint, _load_trained, _predictor])
def test_every_checkpoint_loader_refuses_a_hub_backbone(hub_checkpoint, network, load):
    error = _refused(load, hub_checkpoint)
    assert HUB_BACKBONE in str(error)
    assert network == []


@pytest.mark.parametrize("command", ["export", "eval", "predict"])
def test_cli_commands_refuse_a_checkpoint_naming_a_hub_model(hub_checkpoint, tiny_data, tmp_path, network, command):
    image = next((tiny_data / "val").rglob("*.png"))
    args = {"export": ["export", "--model", str(hub_checkpoint), "--output", str(tmp_path / "bundle")],
            "eval": ["eval", "--model", str(hub_checkpoint), "--data", str(tiny_data),
                     "--output", str(tmp_path / "eval")],
            "predict": ["predict", str(image), "--model", str(hub_checkpoint)]}[command]
    assert HUB_BACKBONE in _cli_error(*args)
    assert network == []


def test_a_pretrained_tag_in_a_bundle_builds_without_fetching_its_weights(run_dir, tmp_path, network):
    """test_resnet.r160_in1k's pretrained_cfg points at the hub; the bundle's own weights are used instead."""
    import numpy as np

    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "tagged", backbone="test_resnet.r160_in1k")
    tagged = Predictor.load(bundle, backend="eager", tta="none")
    plain = Predictor.load(run_dir / "model", backend="eager", tta="none")
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tagged.logits([image]), plain.logits([image]))
    assert network == []


# ----- config.json: bounded in size and depth ---------------------------------------------------------

def test_config_json_nested_100000_deep_is_refused_in_one_line(run_dir, tmp_path, tiny_data):
    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "deep")
    write_nested_json(bundle / "config.json")
    message = _without(_refused(Predictor.load, bundle), bundle)
    assert "DIR/config.json" in message and "deep" in message
    image = next((tiny_data / "val").rglob("*.png"))
    assert "config.json" in _cli_error("predict", str(image), "--model", str(bundle))


def test_a_config_json_of_many_megabytes_is_refused_before_it_is_parsed(run_dir, tmp_path):
    from finetune.models.source import BundleConfig

    padding = "x" * (64 * 2**20)  # 64 MiB of one class name: no bundle's config.json is near this
    bundle = edited_bundle(run_dir / "model", tmp_path / "huge", notes=padding)
    error = _refused(BundleConfig.load, bundle)
    assert "config.json" in str(error) and "MiB" in str(error)


# ----- ONNX external data that leaves the bundle -------------------------------------------------------

@pytest.mark.parametrize("location", OUTSIDE)
@pytest.mark.parametrize("int8", [False, True])
def test_onnx_external_data_outside_the_bundle_is_refused_before_onnxruntime_opens_it(
        run_dir, tmp_path, monkeypatch, location, int8):
    import onnxruntime

    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "escape")
    point_onnx_at(run_dir / "model" / "model.onnx", bundle / ("model.int8.onnx" if int8 else "model.onnx"), location)
    sessions: list[str] = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda path, *a, **k: sessions.append(path) or real(path, *a, **k))
    message = _without(_refused(Predictor.load, bundle, int8=int8), bundle)
    assert repr(location) in message and "outside" in message
    assert sessions == []  # refused before onnxruntime was given the file


def test_predict_with_an_escaping_onnx_bundle_exits_with_one_error_line(run_dir, tmp_path, tiny_data):
    bundle = edited_bundle(run_dir / "model", tmp_path / "escape")
    point_onnx_at(run_dir / "model" / "model.onnx", bundle / "model.onnx", OUTSIDE[0])
    image = next((tiny_data / "val").rglob("*.png"))
    assert OUTSIDE[0] in _cli_error("predict", str(image), "--model", str(bundle))


def test_onnx_external_data_through_a_link_that_leaves_the_bundle_is_refused(run_dir, tmp_path):
    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "linked")
    (bundle / "weights.bin").symlink_to("/etc/passwd")
    point_onnx_at(run_dir / "model" / "model.onnx", bundle / "model.onnx", "weights.bin")
    message = _without(_refused(Predictor.load, bundle), bundle)
    assert "'weights.bin'" in message and "outside" in message


# ----- recipes and config.yaml: not YAML, binary, nested, python tags ----------------------------------

def _bad_recipe(kind: str, path: Path, marker: Path) -> Path:
    if kind == "python tag":
        return write_python_tag_yaml(path, marker)
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
        return path
    if kind == "nested":
        return write_nested_yaml(path)
    path.write_text("epochs: [3\nlr: {0.1\n")  # an unclosed flow sequence: not YAML
    return path


@pytest.mark.parametrize("kind", ["python tag", "binary", "nested", "not yaml"])
def test_a_bad_recipe_file_is_one_error_line_naming_it(tiny_data, tmp_path, kind):
    marker = tmp_path / "ran"
    recipe = _bad_recipe(kind, tmp_path / "recipe.yaml", marker)
    line = _cli_error("run", "--backbone", "test_resnet", "--data", str(tiny_data), "--output", str(tmp_path / "r"),
                      "--recipe", str(recipe))
    assert _squash(recipe) in line
    assert not marker.exists()


def test_load_recipe_raises_a_finetune_error_for_a_python_tag(tmp_path):
    from finetune.config import load_recipe

    recipe = write_python_tag_yaml(tmp_path / "tagged.yaml", tmp_path / "ran")
    error = _refused(load_recipe, str(recipe))
    assert str(recipe) in str(error) and "python/object/apply" in str(error)


def test_a_recipe_whose_aliases_expand_to_millions_of_values_is_refused(tmp_path):
    """9**7 = 4.8 million values from 300 bytes: refused before any check walks (or prints) them."""
    from finetune.config import load_recipe

    recipe = write_alias_bomb_yaml(tmp_path / "bomb.yaml")
    error = _refused(load_recipe, str(recipe))
    message = _without(error, tmp_path)
    assert "DIR/bomb.yaml" in message and "aliases" in message and len(message) < 500


def _run_copy(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


def test_resume_refuses_a_config_yaml_with_a_python_tag(run_dir, tmp_path):
    copy = _run_copy(run_dir, tmp_path / "run")
    marker = tmp_path / "ran"
    saved = (copy / "config.yaml").read_text().replace("epochs: 1\n", "")
    write_python_tag_yaml(copy / "config.yaml", marker, extra=saved)
    line = _cli_error("run", "--resume", str(copy), "--epochs", "2")
    assert "config.yaml" in line and "python/object/apply" in line
    assert not marker.exists()


def test_resume_refuses_config_yaml_nested_100000_deep(run_dir, tmp_path):
    from finetune.run.resume import resume_config

    copy = _run_copy(run_dir, tmp_path / "run")
    write_nested_yaml(copy / "config.yaml")
    assert "config.yaml" in str(_refused(resume_config, copy))


def test_runs_listing_refuses_a_config_yaml_with_a_python_tag(run_dir, tmp_path):
    copy = _run_copy(run_dir, tmp_path / "runs" / "one")
    write_python_tag_yaml(copy / "config.yaml", tmp_path / "ran")
    assert "config.yaml" in _cli_error("runs", str(tmp_path / "runs"))


# ----- --resume of a last.ckpt that does not load ------------------------------------------------------

def test_resume_refuses_a_truncated_last_ckpt_in_one_line(run_dir, tmp_path):
    copy = _run_copy(run_dir, tmp_path / "run")
    last = copy / "checkpoints" / "last.ckpt"
    truncated_copy(run_dir / "checkpoints" / "last.ckpt", last)
    line = _cli_error("run", "--resume", str(copy), "--epochs", "2")
    assert "last.ckpt" in line


def test_resume_refuses_a_last_ckpt_holding_a_pickled_call(run_dir, tmp_path):
    copy = _run_copy(run_dir, tmp_path / "run")
    marker = tmp_path / "ran"
    write_pickled_call_checkpoint(run_dir / "checkpoints" / "last.ckpt", copy / "checkpoints" / "last.ckpt", marker)
    line = _cli_error("run", "--resume", str(copy), "--epochs", "2")
    assert "last.ckpt" in line and "weights_only" in line
    assert not marker.exists()


def test_resume_refuses_best_ckpt_copied_over_last_ckpt(run_dir, tmp_path):
    """best.ckpt keeps no optimizer state (checkpoint_format.TRAINING_STATE): training cannot continue from it."""
    import shutil

    copy = _run_copy(run_dir, tmp_path / "run")
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", copy / "checkpoints" / "last.ckpt")
    assert "optimizer_states" in _cli_error("run", "--resume", str(copy), "--epochs", "2")


# ----- what stays accepted, and checkpoint records of the wrong type -------------------------------------

def test_onnx_external_data_inside_the_bundle_still_loads(run_dir, tmp_path):
    """Models over 2 GB keep their weights beside model.onnx: a location inside the bundle is fine."""
    import numpy as np
    import onnx

    from finetune.inference import Predictor

    bundle = edited_bundle(run_dir / "model", tmp_path / "external")
    onnx.save_model(onnx.load(str(bundle / "model.onnx")), str(bundle / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    assert (bundle / "model.onnx.data").stat().st_size > 0
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    external = Predictor.load(bundle, tta="none").logits([image])
    np.testing.assert_array_equal(external, Predictor.load(run_dir / "model", tta="none").logits([image]))


@pytest.mark.parametrize("load", [_load_teacher, _load_trained])
def test_a_checkpoint_with_a_list_for_its_build_options_is_refused_in_one_line(run_dir, tmp_path, load):
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["finetune"]["build_options"] = ["transform_input"]
    torch.save(ckpt, tmp_path / "odd.ckpt")
    assert "finetune.build_options" in str(_refused(load, tmp_path / "odd.ckpt"))
