"""File names that are not UTF-8 through scan, run, eval, predict and export.

On Linux a name is bytes; Python hands the bytes that are not UTF-8 to str as surrogates (os.fsdecode).
Every output must name such a file so that its exact bytes can be had back: byte-exact in CSV and
bad_files.txt, JSON "\\udcff" escapes (json.loads + os.fsencode), and in config.yaml and on the console
the escaped text "\\xff" (a byte), "\\\\" (a backslash), which `codecs.escape_decode` reads back to the bytes.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from finetune.cache import cache_dir
from finetune.cli import app
from finetune.console import console
from finetune.data.scan import scan_image_folder
from finetune.inference import Prediction
from finetune.prediction_output import write_predictions

from bad_inputs import NOT_UTF8, make_not_utf8_corpus, not_utf8, refuses_not_utf8

runner = CliRunner()
TINY_RUN = ("--backbone", "test_resnet", "--weights", "none", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--limit-val-batches", "1", "--precision", "32",
            "--no-progress")
GOOD, BAD = not_utf8("good", ".png"), not_utf8("bad", ".jpg")
# How the console and config.yaml show them, worked by hand: each byte that is not UTF-8 as \xNN.
GOOD_SHOWN, BAD_SHOWN = r"good\xff\xfe.png", r"bad\xff\xfe.jpg"


def _unescaped(text: str) -> bytes:
    """The bytes an escaped name stands for, read by the standard library's own escape decoder."""
    return codecs.escape_decode(text.encode("utf-8"))[0]


def _output(result) -> str:
    """stdout and stderr of a CliRunner result, after checking it ended without a traceback."""
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out, out
    return "".join(out.split())  # rich wraps long lines anywhere, even inside a path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("names")
    if refuses_not_utf8(folder):
        pytest.skip("this file system refuses names that are not UTF-8")
    return folder


@pytest.fixture(scope="module")
def data(base: Path) -> Path:
    return make_not_utf8_corpus(base / "data")


@pytest.fixture(scope="module")
def trained(base: Path, data: Path):
    """`finetune run` (with its export) on a data folder whose name is not UTF-8: (result, run dir)."""
    run_dir = base / "run"
    result = runner.invoke(app, ["run", "--data", str(data), "--output", str(run_dir), *TINY_RUN])
    return result, run_dir


def _bad_files(data: Path) -> set[bytes]:
    return {os.fsencode(data / split / name / BAD) for split, name in (("train", "cat"), ("test", "dog"))}


# ----- the escaped form -------------------------------------------------------------------------

def _byte_names() -> list[bytes]:
    """Every single byte, and 500 random byte strings of 1-12 bytes drawn over all 256 values."""
    rng = np.random.default_rng(0)
    drawn = [rng.integers(0, 256, int(rng.integers(1, 13)), dtype=np.uint8).tobytes() for _ in range(500)]
    return [bytes([b]) for b in range(256)] + drawn + ["ünï 名前/a b".encode(), NOT_UTF8, b"a\\xff"]


def test_escaped_names_are_printable_utf8_that_the_standard_library_reads_back():
    from finetune.pathtext import escaped, unescaped

    for raw in _byte_names():
        shown = escaped(os.fsdecode(raw))
        shown.encode("utf-8")  # strict: no surrogates left
        assert shown.isprintable(), raw  # no control or format characters left
        assert _unescaped(shown) == raw, (raw, shown)
        assert os.fsencode(unescaped(shown)) == raw, (raw, shown)
    assert escaped("ünï 名前/a b.png") == "ünï 名前/a b.png"  # a UTF-8 name without backslashes is unchanged


# ----- scan -------------------------------------------------------------------------------------

def test_scan_and_its_cache_keep_the_exact_names(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = scan_image_folder(data, progress=False)
        again = scan_image_folder(data, progress=False)  # read back from the scan cache
    for index in (first, again):
        assert {os.fsencode(p) for p, _ in index.bad_files} == _bad_files(data)
        assert os.fsencode(data / "train" / "cat" / GOOD) in {os.fsencode(p) for p, _ in index.train + index.val}
    # The scan cache is JSON text: its \udcff escapes read back as the surrogates of the names' bytes.
    stored = {os.fsencode(k) for f in (cache_dir() / "scan").glob("*.json") for k in json.loads(f.read_bytes())}
    assert _bad_files(data) <= stored


# ----- run --------------------------------------------------------------------------------------

def test_run_trains_and_shows_the_skipped_names_escaped(trained):
    result, _ = trained
    out = _output(result)
    assert result.exit_code == 0, out
    assert "Skipped2unreadablefiles" in out
    assert BAD_SHOWN in out and "data\\xff\\xfe" in out


def test_run_bad_files_txt_holds_the_exact_bytes(trained, data):
    _, run_dir = trained
    lines = (run_dir / "bad_files.txt").read_bytes().splitlines()
    assert {line.split(b"\t")[0] for line in lines} == _bad_files(data)
    assert all(b"truncated" in line.split(b"\t")[1] for line in lines)


def test_run_config_yaml_is_valid_utf8_and_names_the_exact_paths(trained, data):
    _, run_dir = trained
    text = (run_dir / "config.yaml").read_bytes().decode("utf-8")  # strict: valid UTF-8
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml refuses escapes of lone surrogates
    record = yaml.load(text, Loader=loader)
    assert _unescaped(record["data"]) == os.fsencode(data)
    assert record["output"] == str(run_dir) == record["resolved"]["run_dir"]  # a UTF-8 path is written as it is


def test_config_yaml_reads_back_as_the_same_paths(trained, data):
    from finetune.config import RunConfig

    _, run_dir = trained
    config = RunConfig.from_yaml(run_dir / "config.yaml")  # what --resume starts from
    assert os.fsencode(config.data) == os.fsencode(data) and os.fsencode(config.output) == os.fsencode(run_dir)


def test_runs_lists_the_data_folder_by_its_escaped_name(trained, base, monkeypatch):
    monkeypatch.setattr(console, "_width", 400)  # wide enough for whole names; restored to unset after
    result = runner.invoke(app, ["runs", str(base)])
    out = _output(result)
    assert result.exit_code == 0, out
    assert "data\\xff\\xfe" in out


# ----- eval -------------------------------------------------------------------------------------

def test_eval_writes_metrics_json_naming_the_exact_folders(trained, data, base):
    _, run_dir = trained
    out_dir = base / not_utf8("eval")
    result = runner.invoke(app, ["eval", "--model", str(run_dir / "model"), "--data", str(data), "--split", "test",
                                 "--output", str(out_dir)])
    out = _output(result)
    assert result.exit_code == 0, out
    assert "eval\\xff\\xfe/metrics.json" in out
    metrics = json.loads((out_dir / "metrics.json").read_bytes())
    assert os.fsencode(metrics["data"]) == os.fsencode(data)
    assert os.fsencode(metrics["model"]) == os.fsencode(run_dir / "model")


# ----- predict ----------------------------------------------------------------------------------

def _predict(run_dir: Path, data: Path, *extra: str):
    images = [str(data / "train" / "cat" / name) for name in (GOOD, BAD)]
    return runner.invoke(app, ["predict", *images, "--model", str(run_dir / "model"), "--top-k", "1", *extra])


def test_predict_shows_the_names_escaped(trained, data, base, monkeypatch):
    monkeypatch.setattr(console, "_width", 400)  # wide enough for whole names; restored to unset after
    _, run_dir = trained
    result = _predict(run_dir, data)
    out = _output(result)
    assert result.exit_code == 0, out  # one image was classified
    assert GOOD_SHOWN in out and f"Skipped{base}/data\\xff\\xfe/train/cat/{BAD_SHOWN}:" in out


def test_predict_on_unreadable_files_only_exits_1(trained, data):
    _, run_dir = trained
    result = runner.invoke(app, ["predict", str(data / "test" / "dog" / BAD), "--model", str(run_dir / "model")])
    out = _output(result)
    assert result.exit_code == 1, out
    assert f"{BAD_SHOWN}:" in out


def test_predict_csv_holds_the_exact_bytes(trained, data, base):
    _, run_dir = trained
    output = base / not_utf8("predictions", ".csv")
    result = _predict(run_dir, data, "--output", str(output))
    assert result.exit_code == 0, _output(result)
    # The file system's bytes as written: read them back with the same error handler os.fsdecode uses.
    with open(output, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    expected = {os.fsencode(data / "train" / "cat" / name) for name in (GOOD, BAD)}
    assert {os.fsencode(r["path"]) for r in rows} == expected
    errors = {os.fsencode(r["path"]).rsplit(b"/", 1)[1]: r["error"] for r in rows}
    assert errors[os.fsencode(GOOD)] == "" and "truncated" in errors[os.fsencode(BAD)]
    assert os.fsencode(data / "train" / "cat" / BAD) in output.read_bytes()


def test_predict_json_is_valid_and_maps_back_to_the_bytes(trained, data, base):
    _, run_dir = trained
    output = base / not_utf8("predictions", ".json")
    result = _predict(run_dir, data, "--output", str(output))
    assert result.exit_code == 0, _output(result)
    records = json.loads(output.read_bytes().decode("utf-8"))  # strict: valid UTF-8 text
    assert {os.fsencode(r["path"]) for r in records} == {os.fsencode(data / "train" / "cat" / n) for n in (GOOD, BAD)}


def test_predictions_file_is_whole_or_untouched_when_writing_fails(tmp_path):
    output = tmp_path / "predictions.csv"
    output.write_text("path,error\nearlier.png,\n")
    # A lone high surrogate never comes from the file system and has no bytes: writing it fails mid-file.
    results = [Prediction("ok.png", ["cat"], [0.9]), Prediction("\ud800.png", ["dog"], [0.8])]
    with pytest.raises(UnicodeEncodeError):
        write_predictions(results, output)
    assert output.read_text() == "path,error\nearlier.png,\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temporary file left


def test_predict_output_that_cannot_be_written_is_an_error_naming_it(trained, data, base):
    _, run_dir = trained
    blocker = base / not_utf8("file")
    blocker.write_text("a file, not a folder")
    result = _predict(run_dir, data, "--output", str(blocker / "out.csv"))
    out = _output(result)
    assert result.exit_code == 2, out
    assert "file\\xff\\xfe/out.csv" in out


# ----- export -----------------------------------------------------------------------------------

def test_export_calibrates_on_a_data_folder_named_not_utf8(trained, data, base):
    _, run_dir = trained
    bundle = base / "bundle"
    result = runner.invoke(app, ["export", "--model", str(run_dir), "--output", str(bundle), "--data", str(data),
                                 "--quantize", "int8"])
    out = _output(result)
    assert result.exit_code == 0, out
    config = json.loads((bundle / "config.json").read_bytes().decode("utf-8"))
    assert config["int8"]["calibration_images"] > 0 and (bundle / "model.int8.onnx").is_file()


# ----- model folders: torch, onnxruntime and safetensors open files by UTF-8 names only -----------

def _model_command(command: str, run_dir: Path, data: Path, folder: Path, weights: Path) -> tuple[list[str], Path]:
    """(CLI arguments that give `command` a model folder named `folder`, what must not be written)."""
    if command == "run":
        return ["run", "--data", str(data), "--output", str(folder), *TINY_RUN], folder
    if command == "export":
        return ["export", "--model", str(run_dir), "--output", str(folder), "--data", str(data)], folder
    if command == "weights":
        folder.mkdir()
        shutil.copy(weights, folder / weights.name)
        args = ["run", "--data", str(data), "--output", str(folder.parent / "weights-run"), *TINY_RUN]
        return [*args, "--weights", str(folder / weights.name)], folder.parent / "weights-run"
    shutil.copytree(run_dir / "model", folder)  # predict from a bundle kept under such a name
    out = folder.parent / "predict-model.csv"
    return ["predict", str(data / "train" / "cat" / GOOD), "--model", str(folder), "--output", str(out)], out


@pytest.mark.parametrize("command", ["run", "export", "predict", "weights"])
def test_model_folder_named_not_utf8_is_an_error_naming_it(trained, data, base, test_resnet_weights, command):
    _, run_dir = trained
    folder = base / not_utf8(f"{command}-model")
    args, unwritten = _model_command(command, run_dir, data, folder, test_resnet_weights)
    result = runner.invoke(app, args)
    out = _output(result)
    assert result.exit_code == 2, out
    assert f"{command}-model\\xff\\xfe" in out and "isnotUTF-8" in out
    assert not unwritten.exists()  # refused before anything is written
