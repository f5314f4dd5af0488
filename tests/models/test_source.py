"""One rule for what a model path is (run dir, .ckpt, bundle) and one reader/writer of config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data.data_config import DataConfig
from finetune.errors import FinetuneError
from finetune.models.source import BUNDLE_FORMAT, FORMAT_VERSION, BundleConfig, BundleError, resolve_model_source

CLASSES = ("circle", "square", "triangle")
DC = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic", crop_pct=0.9)


def _config(**changes) -> dict:
    raw = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "backbone": "test_resnet",
           "num_classes": len(CLASSES), "class_names": list(CLASSES), "data_config": DC.to_dict()}
    return {k: v for k, v in {**raw, **changes}.items() if v is not None}


def _bundle(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_config(**changes)))
    return folder


def _ckpt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")  # recognition looks at names only; loading is checked elsewhere
    return path


# ----- resolve_model_source ------------------------------------------------------------------------
def test_run_dir_without_bundle_gives_its_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    best, _ = _ckpt(run / "checkpoints" / "best.ckpt"), _ckpt(run / "checkpoints" / "last.ckpt")
    source = resolve_model_source(run)
    assert (source.run_dir, source.checkpoint, source.bundle) == (run, best, None)


def test_run_dir_with_bundle_gives_both(tmp_path):
    run = tmp_path / "run"
    last = _ckpt(run / "checkpoints" / "last.ckpt")  # no best.ckpt: last is the fallback
    bundle = _bundle(run / "model")
    source = resolve_model_source(str(run))
    assert (source.run_dir, source.checkpoint, source.bundle) == (run, last, bundle)


def test_run_dir_with_only_its_bundle(tmp_path):
    bundle = _bundle(tmp_path / "run" / "model")
    source = resolve_model_source(tmp_path / "run")
    assert (source.run_dir, source.checkpoint, source.bundle) == (tmp_path / "run", None, bundle)


def test_checkpoint_file_is_taken_as_given(tmp_path):
    run = tmp_path / "run"
    ckpt = _ckpt(run / "checkpoints" / "last.ckpt")
    _ckpt(run / "checkpoints" / "best.ckpt")
    _bundle(run / "model")
    source = resolve_model_source(ckpt)
    assert (source.checkpoint, source.bundle, source.run_dir) == (ckpt, None, run)  # the file asked for, nothing else
    loose = _ckpt(tmp_path / "elsewhere" / "model.ckpt")
    assert resolve_model_source(loose).run_dir is None


def test_bundle_folder(tmp_path):
    bundle = _bundle(tmp_path / "exported")
    source = resolve_model_source(bundle)
    assert (source.bundle, source.checkpoint, source.run_dir) == (bundle, None, None)


@pytest.mark.parametrize("kind", ["missing", "empty dir", "dir without checkpoints/"])
def test_nothing_that_fits_names_what_was_expected(tmp_path, kind):
    path = tmp_path / "x"
    if kind != "missing":
        path.mkdir()
    if kind == "dir without checkpoints/":
        _ckpt(path / "checkpoints" / "epoch=3.ckpt")
    with pytest.raises(FinetuneError) as e:
        resolve_model_source(path)
    message = str(e.value)
    assert str(path) in message and ("does not exist" in message) == (kind == "missing")
    for expected in ("config.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "model/config.json",
                     ".ckpt file"):
        assert expected in message, message


# ----- BundleConfig --------------------------------------------------------------------------------
def test_bundle_config_round_trip(tmp_path):
    config = BundleConfig(backbone="tv:resnet18", class_names=CLASSES, data_config=DC,
                          build_options={"transform_input": False}, tta="flip", temperature=1.7,
                          split={"val_split": 0.25, "seed": 3},
                          extra={"parity": {"images": 16}, "files": ["model.onnx"]})
    written = config.save(tmp_path / "bundle")
    assert written == tmp_path / "bundle" / "config.json"
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == ["config.json"]  # no temporary file left
    raw = json.loads(written.read_text())
    assert raw["format"] == "finetune-bundle" and raw["format_version"] == 1 and raw["num_classes"] == 3
    assert raw["parity"] == {"images": 16} and raw["data_config"]["interpolation"] == "bicubic"
    loaded = BundleConfig.load(tmp_path / "bundle")
    assert loaded == config
    assert loaded.num_classes == 3 and loaded.class_names == CLASSES and loaded.data_config == DC


def test_minimal_config_gets_the_defaults(tmp_path):
    loaded = BundleConfig.load(_bundle(tmp_path / "b"))
    assert (loaded.tta, loaded.temperature, loaded.split, loaded.build_options) == ("none", 1.0, None, None)


def test_wrong_format_is_named(tmp_path):
    bundle = _bundle(tmp_path / "b", format="keras-model")
    with pytest.raises(BundleError, match=r"not a finetune-bundle config \(format: 'keras-model'\)"):
        BundleConfig.load(bundle)


@pytest.mark.parametrize("changes, fragments", [
    ({"format_version": 2}, ["format_version 2", "1 to 1"]),
    ({"format_version": "one"}, ["format_version 'one'"]),
    ({"class_names": None, "data_config": None}, ["class_names, data_config", "format, format_version, backbone"]),
    ({"num_classes": 4}, ["num_classes 4", "3 class_names"]),
    ({"data_config": {"mean": [0.5] * 3}}, ["data_config", "input_size"]),
])
def test_invalid_config_names_the_problem(tmp_path, changes, fragments):
    bundle = _bundle(tmp_path / "b", **changes)
    with pytest.raises(BundleError) as e:
        BundleConfig.load(bundle)
    assert str(bundle / "config.json") in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_unreadable_or_missing_config_json(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="config.json is missing"):
        BundleConfig.load(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        BundleConfig.load(tmp_path / "b")
