"""A corpus of bad input (broken, odd, hidden and linked files) through scan, run, eval, predict, export.

Every command must get through it: bad files are skipped and listed with a reason, odd but valid
images are used, and what cannot go on is a one-line error naming the folder and why.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.images import load_image
from finetune.data.scan import DataWarning, scan_image_folder

from bad_inputs import (
    BAD,
    HIDDEN,
    HUGE_SIDE,
    ODD_GOOD,
    disk_full_after,
    make_bad_corpus,
    make_only_bad_class,
    make_val_class_missing_from_train,
    small_filesystem,
    wait_for,
    write_bad_files,
)

runner = CliRunner()
TINY_RUN = ("--backbone", "test_resnet", "--weights", "none", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--limit-val-batches", "1", "--precision", "32",
            "--no-progress")


def _bad_paths(corpus: Path) -> set[Path]:
    return {corpus / split / name / f for split, name in (("train", "cat"), ("val", "dog")) for f in BAD}


def _squash(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines anywhere, even inside a path


def _assert_clean_exit(result, code: int = 0) -> str:
    """The command ended with `code` and no traceback; returns its output, whitespace removed."""
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    assert "Traceback" not in out, out
    assert result.exit_code == code, out
    return _squash(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bad_corpus(tmp_path_factory.mktemp("bad") / "data ünï")


@pytest.fixture(scope="module")
def scanned(corpus):
    """(index, DataWarning messages) of one scan of the corpus."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        index = scan_image_folder(corpus, progress=False)
    return index, [str(w.message) for w in record if issubclass(w.category, DataWarning)]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One `finetune run` (with export) on the corpus: (CLI result, run directory)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run 1"
    result = runner.invoke(app, ["run", "--data", str(corpus), "--output", str(run_dir), *TINY_RUN])
    return result, run_dir


# ----- scan -------------------------------------------------------------------------------------

def test_scan_lists_every_bad_file_with_its_reason(corpus, scanned):
    index, _ = scanned
    reasons = {path: reason for path, reason in index.bad_files}
    assert set(reasons) == _bad_paths(corpus)
    for path, reason in reasons.items():
        assert BAD[path.name] in reason, (path.name, reason)
    assert "points to nowhere/missing.jpg" in reasons[corpus / "train" / "cat" / "dangling.jpg"]


def test_scan_warning_names_the_folder_and_the_count(corpus, scanned):
    _, messages = scanned
    summary = [m for m in messages if "bad file" in m]
    assert len(summary) == 1
    assert str(corpus) in summary[0] and f"skipped {2 * len(BAD)} bad file(s)" in summary[0]


def test_scan_keeps_odd_images_and_ignores_hidden_files(corpus, scanned):
    index, _ = scanned
    train = {path.name for path, _ in index.train}
    assert set(ODD_GOOD) <= train
    assert not {name for name in train if name.startswith(".")}
    assert not any(part.startswith(".") for path, _ in index.bad_files for part in path.parts[-2:])
    assert index.counts("train") == {"cat": 4 + len(ODD_GOOD), "dog": 5}
    assert index.counts("val") == {"cat": 2, "dog": 2} and index.counts("test") == {"cat": 2, "dog": 2}
    assert set(HIDDEN).isdisjoint(train)


def test_odd_images_decode_to_rgb(corpus):
    folder = corpus / "train" / "cat"
    shapes = {name: load_image(folder / name).shape for name in ODD_GOOD if name != "huge_10000x10000.png"}
    assert all(len(s) == 3 and s[2] == 3 for s in shapes.values())
    assert shapes["exif_rotated.jpg"] == (30, 20, 3)  # stored 30 wide x 20 high, shown rotated
    assert shapes["tiny_1x1.png"] == (1, 1, 3)


HUGE_PROBE = """
import sys, time
from finetune.data.images import load_image
start = time.perf_counter()
img = load_image(sys.argv[1])
seconds = time.perf_counter() - start
# VmHWM: this process's own peak since exec. ru_maxrss would also count the forking parent's memory
# (Linux keeps the pre-exec high-water mark), i.e. the whole test session's.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak_mb = int(hwm.split()[1]) // 1024
print(img.shape, img.dtype, int(img.min()), int(img.max()), peak_mb, seconds)
"""


def test_huge_image_decodes_in_bounded_time_and_memory(corpus):
    # A process of its own: its peak memory is the decode's, and warnings show as a user sees them.
    done = subprocess.run([sys.executable, "-c", HUGE_PROBE, str(corpus / "train" / "cat" / "huge_10000x10000.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, dtype, low, high, peak_mb, seconds = done.stdout.rsplit(" ", 5)
    # Over Pillow's MAX_IMAGE_PIXELS (89 megapixels): decoded reduced by 2, under it.
    assert (shape, dtype, low, high) == (f"({HUGE_SIDE // 2}, {HUGE_SIDE // 2}, 3)", "uint8", "90", "90")
    # Full-size RGB copies of the 100 MB grey decode took 989 MB; no full-size RGB copy is left to make.
    assert int(peak_mb) < 1.5 * 300, "peak memory above 1.5x a full-size RGB copy (300 MB)"
    assert float(seconds) < 30
    assert "DecompressionBomb" not in done.stderr  # a 100-megapixel photo is no decompression bomb


def _command(name: str, data: Path, model_dir: Path, out: Path) -> list[str]:
    """CLI arguments of `name` (run, eval or export) on the image folder `data`."""
    if name == "run":
        return ["run", "--data", str(data), "--output", str(out), *TINY_RUN]
    if name == "eval":
        return ["eval", "--model", str(model_dir / "model"), "--data", str(data), "--output", str(out)]
    return ["export", "--model", str(model_dir), "--output", str(out), "--data", str(data)]


@pytest.mark.parametrize("command", ["run", "eval", "export"])
def test_class_with_only_bad_files_is_an_error_listing_them(trained, tmp_path, command):
    root = make_only_bad_class(tmp_path / "flat")
    result = runner.invoke(app, _command(command, root, trained[1], tmp_path / "out"))
    flat = _assert_clean_exit(result, 2)
    assert _squash(f"no readable image in class folder(s) {root / 'broken'} [skipped {len(BAD)}:") in flat
    for name, why in BAD.items():
        assert _squash(f"{name} ({why}") in flat, name


@pytest.mark.parametrize("command", ["run", "eval", "export"])
def test_val_class_missing_from_train_is_an_error_naming_both(trained, tmp_path, command):
    root = make_val_class_missing_from_train(tmp_path / "split")
    result = runner.invoke(app, _command(command, root, trained[1], tmp_path / "out"))
    flat = _assert_clean_exit(result, 2)
    assert _squash(f"{root / 'val'} has class folder(s) not in train: bird") in flat


def test_predict_on_a_folder_of_bad_files_names_each(trained, tmp_path):
    root = make_only_bad_class(tmp_path / "flat")
    result = runner.invoke(app, ["predict", str(root / "broken"), "--model", str(trained[1] / "model")])
    flat = _assert_clean_exit(result, 1)  # 1: nothing could be classified
    for name, why in BAD.items():
        if name != "notes.txt":  # a folder is searched for image extensions only
            assert _squash(f"Skipped {root / 'broken' / name}: {why}") in flat, name


# ----- run, export, eval, predict ---------------------------------------------------------------

def test_run_trains_on_the_corpus_and_writes_bad_files(corpus, trained):
    result, run_dir = trained
    out = _assert_clean_exit(result)
    assert _squash(f"Skipped {2 * len(BAD)} unreadable files") in out
    listed = {Path(line.split("\t")[0]) for line in (run_dir / "bad_files.txt").read_text().splitlines()}
    assert listed == _bad_paths(corpus)
    assert (run_dir / "model" / "config.json").is_file()


def test_export_with_the_corpus_as_data(corpus, trained, tmp_path):
    _, run_dir = trained
    result = runner.invoke(app, ["export", "--model", str(run_dir), "--output", str(tmp_path / "bundle"),
                                 "--data", str(corpus)])
    _assert_clean_exit(result)
    assert (tmp_path / "bundle" / "model.onnx").is_file()


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_on_the_corpus(corpus, trained, tmp_path, split):
    _, run_dir = trained
    result = runner.invoke(app, ["eval", "--model", str(run_dir / "model"), "--data", str(corpus),
                                 "--split", split, "--output", str(tmp_path / "eval")])
    _assert_clean_exit(result)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_predict_skips_and_names_every_bad_file(corpus, trained):
    _, run_dir = trained
    folder = corpus / "train" / "cat"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(run_dir / "model"), "--top-k", "1"])
    flat = _assert_clean_exit(result)
    for name in set(BAD) - {"notes.txt"}:  # a folder is searched for image extensions only
        assert _squash(f"Skipped {folder / name}: {BAD[name]}") in flat, name
    for name in ODD_GOOD:
        assert _squash(name) in flat, name
    assert not any(hidden in flat for hidden in (*HIDDEN, ".thumbnails"))  # ignored, as by the scan


def test_predict_on_broken_links_given_by_name(corpus, trained):
    _, run_dir = trained
    links = [corpus / "train" / "cat" / name for name in ("loop.jpg", "dangling.jpg")]
    result = runner.invoke(app, ["predict", *map(str, links), str(corpus / "no such.png"),
                                 "--model", str(run_dir / "model")])
    flat = _assert_clean_exit(result, 1)  # 1: nothing could be classified
    for link in links:
        assert _squash(f"Skipped {link}: {BAD[link.name]}") in flat
    assert _squash(f"Error: {corpus / 'no such.png'}: no such file") in flat  # said once, as an error
    assert _squash(f"Skipped {corpus / 'no such.png'}") not in flat


# ----- interrupts ---------------------------------------------------------------------------------------------------
def _long_run(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "finetune", "run", "--data", str(data), "--output", str(out), "--backbone",
            "test_resnet", "--weights", "none", "--image-size", "32", "--epochs", "60", "--batch-size", "4",
            "--workers", "2", "--precision", "32", *extra]


def _default_signals() -> None:
    """In the child, before exec: Ctrl-C and SIGTERM do what they do by default (a test runner started in the
    background, or by a harness, may hand its children an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("to, sig", [("group", signal.SIGINT), ("main", signal.SIGINT), ("main", signal.SIGTERM),
                                     ("group", signal.SIGTERM)],
                         ids=["ctrl-c-in-a-terminal", "sigint-to-the-main-process", "sigterm", "sigterm-to-the-group"])
def test_a_signal_stops_the_run_in_one_line_and_resume_goes_on(tiny_data, tmp_path, to, sig):
    """A terminal's Ctrl-C reaches every process of its group (the DataLoader workers too); a service manager's
    SIGTERM the main process. Either way: exit 128 + the signal, one line with the epoch and the --resume
    command, no traceback, and a last.ckpt that --resume continues from."""
    out = tmp_path / "run"
    process = subprocess.Popen(_long_run(tiny_data, out, "--no-progress"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=_default_signals)  # as a terminal starts it, whoever runs the tests
    wait_for(out / "checkpoints" / "last.ckpt", process)
    (os.killpg if to == "group" else os.kill)(process.pid, sig)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + sig, output
    assert "Traceback" not in output and "Error" not in output, output
    name = "Ctrl-C (SIGINT)" if sig == signal.SIGINT else "SIGTERM"
    assert _squash(f"Stopped by {name} in epoch") in _squash(output), output
    assert _squash(f"Continue with: finetune run --resume {out}") in _squash(output), output
    kept = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    resumed = subprocess.run([sys.executable, "-m", "finetune", "run", "--resume", str(out), "--epochs", str(kept + 2),
                              "--no-progress", "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with open(out / "metrics.csv", newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(1, kept + 3))  # every epoch once, counted from 1, none lost, none twice


def test_the_python_api_raises_interrupted_and_ctrl_c_works_afterwards(tiny_data, tmp_path):
    """In a notebook the interrupt button is a SIGINT: fit raises Interrupted (a KeyboardInterrupt naming the
    epoch and the resume command), and Ctrl-C still raises KeyboardInterrupt afterwards."""
    import pytorch_lightning as pl

    from finetune.config import RunConfig
    from finetune.errors import Interrupted
    from finetune.run.fit import fit

    class CtrlCInSecondEpoch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever started the tests
    out = tmp_path / "run"
    config = RunConfig(backbone="test_resnet", weights="none", data=tiny_data, output=out, image_size=32, epochs=5,
                       batch_size=8, workers=0, progress=False, export=False, precision="32")
    with pytest.raises(Interrupted) as stopped:
        fit(config, callbacks=[CtrlCInSecondEpoch()])
    assert stopped.value.signal_number == signal.SIGINT
    assert str(stopped.value) == (f"Stopped by Ctrl-C (SIGINT) in epoch 2 of 5; {out / 'checkpoints' / 'last.ckpt'} "
                                  f"keeps epoch 1. Continue with: finetune run --resume {out}")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


# ----- a full disk -----------------------------------------------------------------------------------------------
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_earlier_files(tiny_data, tmp_path,
                                                                                        monkeypatch):
    import finetune.atomic

    out = tmp_path / "run"
    # test_resnet's best.ckpt: ~0.3 MB
    monkeypatch.setattr(finetune.atomic, "open", disk_full_after(50_000), raising=False)
    result = runner.invoke(app, ["run", "--data", str(tiny_data), "--output", str(out), *TINY_RUN])
    text = _assert_clean_exit(result, 2)
    assert f"Error:nospaceleftin{out / 'checkpoints'}writingbest.ckpt(itneedsabout".replace(" ", "") in text
    assert (out / "config.yaml").is_file()  # written before, kept
    assert [p.name for p in out.rglob("*") if ".tmp" in p.name] == []


def test_a_full_filesystem_is_one_line_for_run_and_export(tiny_data, trained, tmp_path):
    with small_filesystem(tmp_path / "disk", "200k") as disk:
        if disk is None:
            pytest.skip("no permission to mount a tmpfs here; the fake full disk above covers the checkpoint")
        run = runner.invoke(app, ["run", "--data", str(tiny_data), "--output", str(disk / "run"), *TINY_RUN])
        exported = runner.invoke(app, ["export", "--model", str(trained[1]), "--output", str(disk / "bundle")])
    for result, where in ((run, f"{disk / 'run' / 'checkpoints'}"), (exported, f"{disk}")):
        text = _assert_clean_exit(result, 2)
        assert f"Error:nospaceleftin{where}writing".replace(" ", "") in text and "MBfree" in text


# ----- errors that stay one line ------------------------------------------------------------------------------
def test_a_run_refused_for_an_all_bad_class_still_names_the_other_bad_files(tmp_path):
    root = make_only_bad_class(tmp_path / "flat")
    write_bad_files(root / "ok")  # bad files in a class that does have readable images
    result = runner.invoke(app, ["run", "--data", str(root), "--output", str(tmp_path / "out"), *TINY_RUN])
    flat = _assert_clean_exit(result, 2)
    assert _squash(f"no readable image in class folder(s) {root / 'broken'} [skipped {len(BAD)}:") in flat
    assert _squash(f"{len(BAD)} other files were skipped as unreadable: {root / 'ok'}") in flat


def test_two_thousand_empty_class_folders_make_a_short_error_with_the_count(tmp_path):
    for i in range(2000):
        (tmp_path / "data" / f"class{i:04d}").mkdir(parents=True)
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                                 *TINY_RUN])
    flat = _assert_clean_exit(result, 2)
    assert len(result.output) < 1000, len(result.output)
    assert _squash("and 1995 more (2000 of 2000 classes)") in flat


def test_eval_of_val_needs_only_val_images(trained, tmp_path):
    """A training class whose images all fail to decode is no reason to refuse scoring val (nor to decode
    the training images at all)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(make_bad_corpus(tmp_path / "corpus"), data, symlinks=True)
    for image in (data / "train" / "dog").iterdir():
        image.write_bytes(b"not an image")
    result = runner.invoke(app, ["eval", "--model", str(trained[1] / "model"), "--data", str(data),
                                 "--output", str(tmp_path / "eval")])
    _assert_clean_exit(result, 0)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert all("/train/" not in row["path"] for row in report["unreadable"])


def test_eval_into_a_read_only_run_directory_is_one_line(trained, corpus, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name.startswith("eval-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = runner.invoke(app, ["eval", "--model", str(trained[1]), "--data", str(corpus)])
    flat = _assert_clean_exit(result, 2)
    assert _squash(f"Error: cannot write {trained[1]}/eval-val") in flat and "Read-onlyfilesystem" in flat


@pytest.mark.parametrize("given", ["an empty folder", "a missing file", "a missing file beside a good one"])
def test_predict_exits_non_zero_when_nothing_or_not_everything_named_could_be_read(trained, corpus, tmp_path,
                                                                                 given):
    (tmp_path / "empty").mkdir()
    good = next((corpus / "val" / "cat").iterdir())
    paths = {"an empty folder": [tmp_path / "empty"], "a missing file": [tmp_path / "gone.jpg"],
             "a missing file beside a good one": [tmp_path / "gone.jpg", good]}[given]
    result = runner.invoke(app, ["predict", *map(str, paths), "--model", str(trained[1] / "model"),
                                 "--output", str(tmp_path / "p.csv")])
    flat = _assert_clean_exit(result, 2 if given == "an empty folder" else 1)
    if given == "an empty folder":
        assert _squash(f"no image files in {tmp_path / 'empty'}: nothing to predict") in flat
    else:
        assert _squash(f"Error: {tmp_path / 'gone.jpg'}: no such file") in flat
    if given == "a missing file beside a good one":
        with open(tmp_path / "p.csv", newline="") as f:
            rows = {row["path"]: row for row in csv.DictReader(f)}
        assert rows[str(good)]["class_1"] in ("cat", "dog")  # still predicted and written


def test_a_val_split_that_leaves_one_training_image_per_class_warns(tmp_path):
    from finetune.data.synthetic import make_image_folder

    root = make_image_folder(tmp_path, "shapes", train_per_class=6, val_per_class=0, size=16, split=False,
                             classes=("circle", "ring"))
    with pytest.warns(DataWarning, match=r"--val-split 0.9 leaves one training image in 2 of 2 classes"):
        scan_image_folder(root, val_split=0.9, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        scan_image_folder(root, val_split=0.2, progress=False)
