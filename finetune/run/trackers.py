"""Experiment trackers (--logger tensorboard / mlflow) through Lightning's own loggers."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger, MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from finetune.config import RunConfig
from finetune.errors import FinetuneError


def tracker_loggers(config: RunConfig, run_dir: Path, mlflow_run_id: str | None = None) -> list[Logger]:
    """Lightning's own loggers for --logger tensorboard / mlflow (metrics.csv is written regardless).

    A resumed run passes the MLflow run it started (recorded in config.yaml), so its metrics
    continue there rather than in a second run of the same name; TensorBoard appends to its folder.

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
    return loggers


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
