"""Claiming a run directory: never write over an earlier run unless asked to."""
from __future__ import annotations

import shutil
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.pathtext import check_model_path

# What a run writes at the top of its directory; --overwrite removes these and nothing else.
RUN_FILES = ("config.yaml", "metrics.csv", "hparams.yaml", "bad_files.txt", "lr_find.png", "curves.png",
             "checkpoints", "model", "tensorboard", "mlflow.db", "mlartifacts")
RUN_FOLDER_PREFIXES = ("eval-",)  # eval-val/, eval-test/: results of the old model


def claim_run_dir(run_dir: Path, overwrite: bool) -> list[str]:
    """Checks that `run_dir` may receive a new run; with `overwrite`, clears an earlier run's files.

    Only the files a run writes are removed, so a mistyped --output (a data folder, a home
    directory) loses nothing else even with --overwrite.

    Returns:
        Names removed from `run_dir` (empty unless `overwrite`).

    Raises:
        FinetuneError: `run_dir` is a file, a non-empty folder and `overwrite` is off, or a path that is
            not UTF-8 (checkpoints and the bundle are written by libraries that need one).
    """
    check_model_path(run_dir, "--output")
    if run_dir.exists() and not run_dir.is_dir():
        raise FinetuneError(f"--output {run_dir} is a file; give a folder for the run")
    present = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
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
