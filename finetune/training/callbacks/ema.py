"""Exponential moving average of the weights, validated next to the raw weights each epoch.

Written as a small class rather than timm's `ModelEmaV3` or torch's `AveragedModel` (Lightning's
`WeightAveraging`): those average every parameter, frozen ones included, and Lightning's callback
validates only the average. Here only parameters that currently train are averaged (checked at
every update, so a schedule that unfreezes layers is followed), both weight sets are validated,
and the checkpoints carry whichever scored higher.
"""
from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from finetune.training.checkpoint_format import EMA, STATE_DICT
from finetune.training.monitor import monitor_metric, monitor_spec, update_monitor_metric

EMA_METRIC = "val_ema/acc1"
SELECTED_METRIC = "val/acc1_selected"  # max of raw and EMA top-1: what best.ckpt is chosen by (--monitor acc1)


class WeightEma:
    """An averaged copy of a network.

    decay_t = min(decay, 1 - (1 + t)^(-2/3)) with warmup (timm's ModelEmaV3 warmup curve:
    0.80 after 10 steps, 0.95 after 100, 0.99 after 1000), so short fine-tuning runs are not
    dominated by the initial weights.

    Args:
        model: The network to average (copied; the copy is what validation runs).
        decay: Final decay per optimizer step.
        warmup: Ramp the decay up from 0 as above; False uses `decay` from the first step.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.steps = decay, warmup, 0

    def decay_at(self, step: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + step) ** (-2.0 / 3.0))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average towards `model`'s trainable parameters and floating-point buffers."""
        weight = 1.0 - self.decay_at(self.steps)
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[n], p) for n, p in model.named_parameters() if p.requires_grad]
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            if buf.is_floating_point():  # running mean/var: averaged; frozen BN's stay constant anyway
                pairs.append((ema_buffers[name], buf))
            else:
                ema_buffers[name].copy_(buf)  # counters such as num_batches_tracked
        if pairs:
            ema, raw = zip(*pairs)
            torch._foreach_lerp_(list(ema), list(raw), weight)
        self.steps += 1

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()


class EmaCallback(pl.Callback):
    """Keeps a `WeightEma` of `pl_module.backbone.model`, validates it, and saves the winner.

    Logs `val_ema/KEY` next to the module's `val/KEY`, and `val/KEY_selected` (the better of the
    two) for the checkpoint callback to monitor, KEY being the --monitor figure (acc1 by default).
    When the EMA scored higher at the latest validation, saved checkpoints hold its weights under
    `state_dict` (so exports and `--weights PATH` use them) and
    the raw weights under `ema["raw_state_dict"]`, restored on resume.

    Args:
        decay: Final EMA decay per optimizer step.
        warmup: Ramp the decay up over the first steps.
        monitor: The --monitor figure both weight sets are compared on.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, monitor: str = "acc1"):
        self.decay, self.warmup, self.monitor = decay, warmup, monitor
        self.spec = monitor_spec(monitor)
        self.ema: WeightEma | None = None
        self.ema_won = False
        self._acc: Metric | None = None
        self._top1: Metric | None = None  # with another --monitor: the EMA's top-1, to report the winner's

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.ema is None:  # before a resume restores it
            self.ema = WeightEma(pl_module.backbone.model, self.decay, self.warmup)
            self._acc = monitor_metric(self.monitor, pl_module.backbone.num_classes)
            if self.monitor != "acc1":
                self._top1 = monitor_metric("acc1", pl_module.backbone.num_classes)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ema.module.to(pl_module.device)
        for metric in (self._acc, self._top1):
            if metric is not None:
                metric.to(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.ema.update(pl_module.backbone.model)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.ema is None or trainer.sanity_checking:
            return
        x, y = batch
        with torch.no_grad():
            out = self.ema.module(x)
        logits = out[0] if isinstance(out, tuple) else out
        update_monitor_metric(self._acc, logits, y)
        if self._top1 is not None:
            self._top1.update(logits, y)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema is None or trainer.sanity_checking:
            return
        ema_value = self._acc.compute().float()  # synced across processes by torchmetrics
        self._acc.reset()
        # The module's own val/KEY reaches callback_metrics only after this hook: read its metric.
        raw_value = pl_module.monitor_value(self.monitor).float().to(ema_value)
        self.ema_won = self.spec.better(float(ema_value), float(raw_value))
        pl_module.log(self.spec.ema_metric, ema_value)
        pl_module.log(self.spec.selected_metric, ema_value if self.ema_won else raw_value)
        if self._top1 is not None:  # the top-1 of the weights best.ckpt would keep, for the run's summary
            ema_top1 = self._top1.compute().float()
            self._top1.reset()
            pl_module.log(EMA_METRIC, ema_top1)
            pl_module.log(SELECTED_METRIC,
                          ema_top1 if self.ema_won else pl_module.val_acc1.compute().float().to(ema_top1))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.ema is None:
            return
        prefix = "backbone.model."
        ema_sd = {prefix + k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        state = {"decay": self.decay, "steps": self.ema.steps, "won": self.ema_won}
        if self.ema_won:
            sd = checkpoint[STATE_DICT]
            state["raw_state_dict"] = {k: sd[k].detach().clone() for k in ema_sd}  # sd may alias the live weights
            sd.update(ema_sd)
        else:
            state["ema_state_dict"] = ema_sd
        checkpoint[EMA] = state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(EMA)
        if state is None or self.ema is None:
            return
        prefix = "backbone.model."
        if "raw_state_dict" in state:  # the module was just loaded with the EMA weights: undo that
            ema_sd = {k: checkpoint[STATE_DICT][k] for k in state["raw_state_dict"]}
            pl_module.load_state_dict(state["raw_state_dict"], strict=False)
        else:
            ema_sd = state["ema_state_dict"]
        self.ema.module.load_state_dict({k[len(prefix):]: v for k, v in ema_sd.items()})
        self.ema.steps, self.ema_won = state["steps"], state["won"]
