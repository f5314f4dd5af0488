"""A quiet console by default: Lightning's banners, tips and library deprecation notices held back.

What the user must see still shows: the toolkit prints the bad files, the class imbalance and a
partial weights load itself, once each; its own warnings show as one line each. `--verbose` lets
everything through. `fit` and the LR range test use it as library calls; the command line wraps
every command in it, with the warnings drawn as one line (`finetune.console`).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# Lightning reports through these loggers at INFO ("GPU available: False", "💡 Tip: ... litlogger",
# "`Trainer(limit_train_batches=1.0)` was configured", "Loading `train_dataloader` to estimate...").
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric",
                     "mlflow", "alembic")  # MLflow's store setup logs its schema migrations at INFO
# Lightning's warnings that describe a choice this toolkit made on purpose, not something to act on.
EXPECTED_WARNINGS = (
    r"The '\w+_dataloader' does not have many workers",  # --workers 0 is the user's (or a test's) choice
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning against this torch version
    r"Experiment logs directory .* exists and is not empty",
    r"Found \d+ module\(s\) in eval mode",  # frozen BatchNorm, on purpose
    r"Checkpoint directory .* exists and is not empty",  # --resume writes into its own checkpoints/
    # val/recall/<class> comes from torchmetrics' confusion matrix, synced before it is logged: the
    # same on every rank, so a second all-reduce per class would add nothing.
    r"It is recommended to use `self.log\('val/recall/",
)


@contextlib.contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Within the block, Lightning logs only warnings and errors, and deprecation notices of the
    libraries and Lightning's expected warnings are not shown (unless `verbose`)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for pattern in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
