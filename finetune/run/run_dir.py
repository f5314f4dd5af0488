"""Claiming a run directory: one run at a time in a folder, and never over an earlier run unless asked to."""
from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from finetune import atomic
from finetune.errors import FinetuneError
from finetune.locks import claimed_folder, contents
from finetune.pathtext import check_model_path

# What a run writes at the top of its directory; --overwrite removes these and nothing else.
RUN_FILES = ("config.yaml", "metrics.csv", "hparams.yaml", "bad_files.txt", "lr_find.png", "curves.png",
             "checkpoints", "model", "tensorboard", "mlflow.db", "mlartifacts", "wandb")
RUN_FOLDER_PREFIXES = ("eval-",)
CHECKPOINT_FILES = ("best.ckpt", "last.ckpt")  # in checkpoints/  # eval-val/, eval-test/: results of the old model
# What `--resume` continues from: the run's settings and the last state Lightning saved.
RESUME_FILES = ("config.yaml", "checkpoints/last.ckpt")


def default_run_dir(backbone: str, root: Path = Path("runs")) -> Path:
    """Creates and returns runs/<date>-<backbone>, with -2, -3... appended when it exists.

    Creating the folder is what reserves the name: two runs started in the same second get two folders.
    """
    stem = f"{datetime.now():%Y-%m-%d_%H%M%S}-{re.sub(r'[^A-Za-z0-9_.-]', '_', backbone)}"
    n = 1
    while True:
        candidate = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1


def check_resumable(run_dir: Path) -> None:
    """Raises FinetuneError naming the first of RESUME_FILES that `run_dir` lacks."""
    for name in RESUME_FILES:
        needed = Path(run_dir) / name
        if not needed.is_file():
            raise FinetuneError(f"--resume {run_dir}: {needed} is missing; resume needs a run directory "
                                f"written by `finetune run` (config.yaml and checkpoints/last.ckpt)")


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path, overwrite: bool = False, resuming: bool = False,
                    created: bool = False) -> Iterator[list[str]]:
    """Holds `run_dir` for one run: no other run, resume or tune trial can start in it meanwhile.

    A new run needs an empty folder (with `overwrite`, an earlier run's files are removed first); a
    resumed run needs its own. Temporary files that a killed run left (a half-written checkpoint)
    are removed once the folder is held. A folder made for the run (`created`, or absent until now) is
    removed again when the run fails before writing anything into it.

    Yields:
        Names removed from `run_dir` by `overwrite` (empty otherwise).

    Raises:
        FinetuneError: `run_dir` is a file, a path that is not UTF-8, another process runs in it, or it is
            a non-empty folder and neither `overwrite` nor `resuming` is set.
    """
    check_model_path(run_dir, "--output")  # checkpoints and the bundle are written by libraries that need UTF-8
    flag = "--resume" if resuming else "--output"
    with claimed_folder(run_dir, f"{flag} {run_dir}", created):
        removed = [] if resuming else _check_new(run_dir, overwrite)
        atomic.remove_leftovers(run_dir, RUN_FILES)
        atomic.remove_leftovers(run_dir / "checkpoints", CHECKPOINT_FILES)
        yield removed


def _check_new(run_dir: Path, overwrite: bool) -> list[str]:
    """Checks that `run_dir` may receive a new run; with `overwrite`, clears an earlier run's files.

    Only the files a run writes are removed, so a mistyped --output (a data folder, a home
    directory) loses nothing else even with --overwrite.
    """
    present = contents(run_dir)
    if not present:
        return []
    if not overwrite:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise FinetuneError(f"--output {run_dir} is not empty ({shown}); continue that run with "
                            f"`finetune run --resume {run_dir}`, replace it with --overwrite, "
                            f"or choose another --output")
    return _remove_run_files(run_dir)


def _remove_run_files(run_dir: Path) -> list[str]:
    removed = []
    for path in sorted(run_dir.iterdir()):
        if path.name in RUN_FILES or (path.is_dir() and path.name.startswith(RUN_FOLDER_PREFIXES)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed
