"""Experiment trackers (--logger tensorboard / mlflow / wandb) through Lightning's own loggers."""
from __future__ import annotations

import functools
import logging
import os
import secrets
import string
import threading
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger, MLFlowLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from finetune.config import RunConfig, read_run_yaml
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)
WANDB_HOST = "https://api.wandb.ai"  # W&B's own default server; WANDB_BASE_URL names another, as for wandb itself
# A W&B server answers an HTTP request in well under a second; an unreachable one makes wandb retry for
# minutes before it gives up. 5 s leaves room for a slow link and bounds what a machine offline pays.
PROBE_SECONDS = 5.0


def tracker_loggers(config: RunConfig, run_dir: Path, mlflow_run_id: str | None = None) -> list[Logger]:
    """Lightning's own loggers for --logger tensorboard / mlflow / wandb (metrics.csv is written regardless).

    A resumed run passes the MLflow run it started (recorded in config.yaml), so its metrics
    continue there rather than in a second run of the same name; the W&B run id is read from the same
    record; TensorBoard appends to its folder.

    Raises:
        FinetuneError: The tracker's package is not installed (with the command that installs it).
    """
    loggers: list[Logger] = []
    if "tensorboard" in config.logger:
        from pytorch_lightning.loggers.tensorboard import _TENSORBOARD_AVAILABLE, TensorBoardLogger

        if not _TENSORBOARD_AVAILABLE:
            raise FinetuneError("--logger tensorboard needs the tensorboard package: pip install 'finetune[trackers]'")
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False))
    if "mlflow" in config.logger:
        from pytorch_lightning.loggers.mlflow import _MLFLOW_AVAILABLE

        if not _MLFLOW_AVAILABLE:
            raise FinetuneError("--logger mlflow needs the mlflow package: pip install 'finetune[trackers]'")
        # MLflow 3 refuses its plain-folder store; a SQLite file in the run dir is its local store now.
        uri = config.mlflow_uri or f"sqlite:///{(run_dir / 'mlflow.db').absolute()}"
        artifacts = None if config.mlflow_uri else (run_dir / "mlartifacts").absolute().as_uri()
        cls = ContinuedMLFlowLogger if mlflow_run_id else MLFlowLogger
        loggers.append(cls(experiment_name="finetune", run_name=run_dir.name, tracking_uri=uri,
                           artifact_location=artifacts, run_id=mlflow_run_id))
    if "wandb" in config.logger:
        loggers.append(wandb_logger(run_dir, config.verbose))
    return loggers


def wandb_logger(run_dir: Path, verbose: bool = False) -> WandbLogger:
    """Lightning's WandbLogger for a run: project $WANDB_PROJECT or "finetune", the run directory's name,
    files under $WANDB_DIR or RUN_DIR (in its wandb/ folder).

    A resumed run continues the W&B run whose id its config.yaml records. Without WANDB_MODE, a W&B host
    that does not answer within PROBE_SECONDS makes the run log offline (said in one line) instead of
    retrying for minutes; `wandb sync` uploads it later.

    Raises:
        FinetuneError: The wandb package is not installed.
    """
    from pytorch_lightning.loggers.wandb import _WANDB_AVAILABLE

    if not _WANDB_AVAILABLE:
        raise FinetuneError("--logger wandb needs the wandb package: pip install 'finetune[trackers]'")
    import wandb

    save_dir = Path(os.environ.get("WANDB_DIR") or run_dir)
    offline = wandb_offline_reason()
    if offline:
        log.warning(f"--logger wandb: {offline}; logging offline to {save_dir / 'wandb'} "
                    f"(upload it later with `wandb sync`)")
    # mode is passed to wandb.init: Lightning's own offline=True would set WANDB_MODE for the whole process.
    return FinishingWandbLogger(
        name=run_dir.name, save_dir=save_dir, id=_recorded_wandb_id(run_dir) or new_wandb_id(),
        project=os.environ.get("WANDB_PROJECT") or "finetune", settings=wandb.Settings(silent=not verbose),
        **({"mode": "offline"} if offline else {}))


def new_wandb_id() -> str:
    """A W&B run id made up front (so config.yaml records it before the run starts): 8 characters of
    lowercase letters and digits, the form wandb makes its own in (36^8, about 2.8e12, ids)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_offline_reason(environ: dict[str, str] | None = None) -> str | None:
    """Why the W&B run must log offline, or None to leave the mode to wandb (WANDB_MODE is set, or the
    W&B host answers an HTTP request within PROBE_SECONDS)."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE"):
        return None
    host = environ.get("WANDB_BASE_URL") or WANDB_HOST
    if _answers(host, PROBE_SECONDS):
        return None
    return f"{host} did not answer within {PROBE_SECONDS:g} s and WANDB_MODE is not set"


@functools.lru_cache(maxsize=8)  # asked once per process: the trials of a study do not wait again each
def _answers(url: str, seconds: float) -> bool:
    """True when `url` returns any HTTP response (an error status included) within `seconds`, name lookup
    included: the request runs in a thread that is left behind when it takes longer."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(url, timeout=seconds).close()  # noqa: S310 - the W&B host the user configured
            answered.append(True)
        except urllib.error.HTTPError:  # a status code is an answer
            answered.append(True)
        except Exception:  # noqa: BLE001 - refused, no route, no name, TLS, not HTTP: no answer
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answered and answered[0])


def _recorded_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id a resumed run's config.yaml records (`resolved.wandb_run_id`); None for a new run,
    whose folder holds no config.yaml yet (a run claims an empty folder: finetune/run/run_dir.py)."""
    path = run_dir / "config.yaml"
    run_id = (read_run_yaml(path).get("resolved") or {}).get("wandb_run_id") if path.is_file() else None
    return str(run_id) if run_id else None


class FinishingWandbLogger(WandbLogger):
    """WandbLogger that finishes its W&B run when training ends: the offline files are complete then,
    and a later run in the same process starts its own W&B run rather than joining this one."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status in ("success", "finished") else 1)


class ContinuedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger on an existing run: MLflow refuses to change a logged parameter, and a resume
    logs the run's settings again with --epochs extended. Parameters the run already has keep their
    first value; a changed one is recorded as the tag `resumed.<name>`, new ones are logged."""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from lightning_fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        fresh = {k: v for k, v in flat.items() if k not in logged}
        changed = {k: v for k, v in flat.items() if k in logged and str(v)[:250] != logged[k]}
        if fresh:
            super().log_hyperparams(fresh)
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"resumed.{key}", str(value)[:5000])
