"""@user_errors: a user error ends a command with one line per problem and exit status 2."""
from __future__ import annotations

import pytest
import typer

from finetune.config import RunConfig
from finetune.console import user_errors
from finetune.errors import DataError


def _exit_and_stderr(fn, capsys) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as exit_info:
        fn()
    return exit_info.value.exit_code, capsys.readouterr().err


def test_a_finetune_error_is_one_line_and_status_2(capsys):
    @user_errors
    def command() -> None:
        raise DataError("no images in /data [train]")

    code, err = _exit_and_stderr(command, capsys)
    assert code == 2 and err == "Error: no images in /data [train]\n"  # rich markup in the message is kept as text


def test_a_bad_setting_names_its_flag_and_value(capsys):
    @user_errors
    def command() -> None:
        RunConfig(data=".", optimizer="lamb", epochs=0)

    code, err = _exit_and_stderr(command, capsys)
    lines = ["Error: " + " ".join(part.split()) for part in err.split("Error: ")[1:]]  # rich wraps long lines
    assert code == 2 and len(lines) == 3, err
    assert lines[0] == "Error: --backbone is required (on the command line or in the recipe)"
    assert lines[1].startswith("Error: --epochs: Input should be greater than or equal to 1") and "(got 0)" in lines[1]
    assert "--optimizer" in lines[2] and "'sgd'" in lines[2] and "(got 'lamb')" in lines[2]


@pytest.mark.parametrize("settings, expected", [
    ({"lr": -0.1}, "Error: --lr: Input should be greater than 0 or 'auto' (got -0.1)"),  # a number or a word
    ({"lr": float("nan")}, "Error: --lr: Input should be a finite number or 'auto' (got nan)"),
    ({"sampler": "balanced", "class_weights": "auto"},  # the setting's own sentence, as written
     "Error: --sampler balanced with --class-weights auto corrects the imbalance twice; use one of them"),
])
def test_one_bad_value_is_one_line_even_where_the_setting_takes_a_number_or_a_word(capsys, settings, expected):
    @user_errors
    def command() -> None:
        RunConfig(backbone="resnet18", data=".", **settings)

    code, err = _exit_and_stderr(command, capsys)
    assert code == 2 and " ".join(err.split()) == expected, err


def test_a_value_error_is_a_user_error_only_where_the_command_says_so(capsys):
    def fails() -> None:
        raise ValueError("unknown TTA mode 'flop'; valid: none, flip")

    with pytest.raises(ValueError, match="flop"):
        user_errors(fails)()
    code, err = _exit_and_stderr(user_errors(value_errors=True)(fails), capsys)
    assert code == 2 and err == "Error: unknown TTA mode 'flop'; valid: none, flip\n"


def test_the_command_keeps_its_signature_and_result():
    import inspect

    @user_errors(value_errors=True)
    def command(top_k: int = 5) -> int:
        """Doc."""
        return top_k * 2

    assert command(3) == 6 and command.__doc__ == "Doc." and list(inspect.signature(command).parameters) == ["top_k"]


# ----- warnings, banners and the progress display -------------------------------------------------------
def test_a_warning_inside_a_command_is_one_yellow_line_without_python_s_source_line(capsys):
    import warnings

    @user_errors
    def command() -> None:
        warnings.warn("skipped 1 bad file(s) in data: a/bad.jpg (not a decodable image)", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)  # a library's notice: held back

    command()
    err = capsys.readouterr().err
    assert err == "Warning: skipped 1 bad file(s) in data: a/bad.jpg (not a decodable image)\n"


def test_lr_find_and_export_print_no_banners_tips_or_library_notices(tiny_data, trained_run, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    runner = CliRunner()
    found = runner.invoke(app, ["lr-find", "--backbone", "test_resnet", "--weights", "none", "--data", str(tiny_data),
                                "--image-size", "32", "--batch-size", "24", "--workers", "0", "--num-steps", "8",
                                "--output", str(tmp_path)])
    exported = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(tmp_path / "bundle")])
    for result in (found, exported):
        assert result.exit_code == 0, result.output
        for noise in ("GPU available", "Tip:", "litlogger", "deprecated", "FutureWarning", "Epoch ", "/-", "it/s",
                      "LR range test"):  # the last two: a live bar, which a pipe does not get
            assert noise not in result.output, (noise, result.output)


def test_the_bar_counts_epochs_from_1_and_shows_only_the_loss():
    from types import SimpleNamespace

    import torch

    from finetune.run.progress import RunProgressBar

    bar = RunProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=27)  # what Lightning attaches
    assert bar._get_train_description(1).strip() == "epoch 2/27"
    metrics = {"train/loss_step": torch.tensor(0.4567), "freeze/trainable_groups": torch.tensor(6.0),
               "train/loss_epoch": torch.tensor(0.5)}
    assert bar.get_metrics(SimpleNamespace(callback_metrics=metrics), None) == {"loss": "0.457"}


@pytest.mark.slow
def test_output_into_a_pipe_has_no_live_bar_and_narrow_lines_break_between_words(tiny_data, tmp_path):
    """Piped (not a terminal), with the default --progress: no bar frames; each epoch on one line whatever
    the width (a record, for grep); at 80 columns every other line that is not a path fits, so nothing is
    broken inside a word."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "finetune", "run", "--backbone", "test_resnet", "--weights", "none",
                           "--data", str(tiny_data), "--output", str(out), "--image-size", "32", "--epochs", "2",
                           "--batch-size", "8", "--workers", "0", "--no-export"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout + done.stderr
    assert "it/s" not in text and "\r" not in text  # no bar drawn into the pipe
    with_paths = (str(tiny_data), str(out))
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"], text
    assert all(line.endswith("img/s") or "ETA" in line for line in epochs), epochs  # the line whole
    long = [line for line in text.splitlines() if len(line) > 80 and not any(p in line for p in with_paths)
            and line not in epochs]
    assert long == [], long


_WORKER_DIES_AS_THE_COMMAND_STOPS = """
import os, signal, time
import torch
from torch.utils.data import DataLoader
from finetune.console import _sigterm_stops
from finetune.errors import Interrupted

def default_sigterm(_):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a worker that SIGTERM kills outright

loader = DataLoader(torch.arange(64.0), batch_size=1, num_workers=1, worker_init_fn=default_sigterm)
batches = iter(loader)
next(batches)
worker = batches._workers[0]
try:
    with _sigterm_stops():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the group's SIGTERM reaches the command...
            time.sleep(5)
        except Interrupted:
            os.kill(worker.pid, signal.SIGTERM)  # ...and its worker, which dies of it
            time.sleep(1)  # the command writes its last files
            print("stopped in one piece")
except RuntimeError as e:
    print("RuntimeError:", e)
"""


def test_a_worker_killed_by_the_same_sigterm_does_not_break_the_stopping_command():
    """torch raises "DataLoader worker ... is killed by signal" from its SIGCHLD handler wherever the main
    thread is; once SIGTERM has stopped the command, the worker's end raises nothing."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WORKER_DIES_AS_THE_COMMAND_STOPS],
                          capture_output=True, text=True, timeout=120)
    assert "stopped in one piece" in done.stdout, done.stdout + done.stderr


_A_COMMAND_THAT_RUNS_TO_ITS_END = """
import signal
import torch
from torch.utils.data import DataLoader
from finetune.console import _sigterm_stops

with _sigterm_stops():
    batches = iter(DataLoader(torch.arange(4.0), batch_size=1, num_workers=1))  # torch installs its handler
    next(batches)
    installed = signal.getsignal(signal.SIGCHLD)
    del batches
print(installed not in (signal.SIG_DFL, None) and signal.getsignal(signal.SIGCHLD) is installed)
"""


def test_a_command_that_was_not_stopped_keeps_torchs_worker_watch():
    """torch sets its SIGCHLD handler once a process: a command that ends normally leaves it for the next."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _A_COMMAND_THAT_RUNS_TO_ITS_END], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "True", done.stdout + done.stderr
