"""Ctrl-C and SIGTERM during a run: it stops at once, keeps its last whole checkpoint and says how to go on.

Lightning reports a Ctrl-C inside `Trainer.fit` as `sys.exit(1)` and a SIGTERM as a SystemExit of status
0 (success), and leaves Ctrl-C ignored afterwards. Here both come out as `finetune.errors.Interrupted`,
whose message names the epoch and the `--resume` command; the CLI prints it and exits with 128 + the
signal's number, as a shell does for a process a signal ended.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from finetune.errors import Interrupted
from finetune.locks import contents

NAMES = {int(signal.SIGINT): "Ctrl-C (SIGINT)", int(signal.SIGTERM): "SIGTERM"}


def signal_of(exception: BaseException | None) -> int | None:
    """The signal an exception, or one it arose from, stands for: SIGINT for a KeyboardInterrupt, SIGTERM
    for Lightning's SIGTERMException, the recorded one for an Interrupted; None for anything else.

    The chain matters: a signal sent to the whole process group also ends the DataLoader workers, and
    their exit raises a RuntimeError while the interrupt is being handled.
    """
    seen = set()
    while exception is not None and id(exception) not in seen:
        seen.add(id(exception))
        if isinstance(exception, Interrupted):
            return exception.signal_number
        if isinstance(exception, SIGTERMException):
            return int(signal.SIGTERM)
        if isinstance(exception, KeyboardInterrupt):
            return int(signal.SIGINT)
        exception = exception.__cause__ or exception.__context__
    return None


class _StopCause(pl.Callback):
    """Keeps the exception a Trainer stopped on: only callbacks see it before Lightning exits."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.exception = exception


@contextlib.contextmanager
def _keeping_ctrl_c() -> Iterator[None]:
    """Sets the SIGINT handler back on leaving (Lightning leaves Ctrl-C ignored after handling one, which
    would leave a notebook's interrupt button dead)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def fit_or_stop(trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
    """`trainer.fit(*args, **kwargs)`; a Ctrl-C or SIGTERM comes out as Interrupted, Ctrl-C works after.

    Raises:
        Interrupted: A signal stopped training (the checkpoints on disk are whole: they are written
            atomically).
    """
    cause = _StopCause()
    trainer.callbacks.append(cause)
    try:
        with _keeping_ctrl_c():
            trainer.fit(*args, **kwargs)
    except BaseException as e:
        signum = signal_of(cause.exception) or signal_of(e)
        if signum is None:
            raise
        raise Interrupted(f"Stopped by {NAMES.get(signum, f'signal {signum}')}", signum) from None
    finally:
        trainer.callbacks.remove(cause)


@contextlib.contextmanager
def stopping(describe: Callable[[str], str]) -> Iterator[None]:
    """Turns a Ctrl-C or SIGTERM inside the block into Interrupted("Stopped by SIGNAL" + `describe(...)`).

    `describe` gets the signal's name and returns the rest of the message: where the run stopped and
    how to go on.
    """
    try:
        yield
    except BaseException as e:
        signum = signal_of(e)
        if signum is None:
            raise
        name = NAMES.get(signum, f"signal {signum}")
        raise Interrupted(f"Stopped by {name} {describe(name)}", signum) from None


def before_training(run_dir: Path, resuming: bool, saved_epoch: Callable[[Path], int]) -> Callable[[str], str]:
    """The message of a stop while the run is planned, its weights loaded or its caches filled: a resumed run
    still has its last.ckpt (read with `saved_epoch`), a new one has nothing to resume."""
    def describe(_: str) -> str:
        last = run_dir / "checkpoints" / "last.ckpt"
        if resuming and last.is_file():
            return (f"before training went on; {last} keeps epoch {saved_epoch(last) + 1}. "
                    f"Continue with: finetune run --resume {run_dir}")
        again = " with --overwrite" if run_dir.is_dir() and contents(run_dir) else ""
        return f"before training started: nothing to resume; start the run again{again}"
    return describe


def during_training(trainer: pl.Trainer, run_dir: Path, epochs: int,
                    saved_epoch: Callable[[Path], int]) -> Callable[[str], str]:
    """The message of a stop while training: the epoch it stopped in, the epoch last.ckpt keeps (read
    with `saved_epoch`) and the command that continues from it. Epochs counted from 1, as on the console."""
    def describe(_: str) -> str:
        last = run_dir / "checkpoints" / "last.ckpt"
        where = f"in epoch {trainer.current_epoch + 1} of {epochs}"
        if not last.is_file():
            return f"{where}, before its first checkpoint: nothing to resume; start the run again with --overwrite"
        return (f"{where}; {last} keeps epoch {saved_epoch(last) + 1}. "
                f"Continue with: finetune run --resume {run_dir}")
    return describe


def after_training(run_dir: Path) -> Callable[[str], str]:
    """The message of a stop in the final evaluation and export: training itself is complete."""
    def describe(_: str) -> str:
        return (f"after training, in the final evaluation and export; {run_dir / 'checkpoints' / 'best.ckpt'} is "
                f"complete. Write the bundle with: finetune export --model {run_dir}")
    return describe
