"""The LightningModule: a backbone with a new head, a freeze boundary, metrics and optimizer groups."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.mixing import MixedBatch
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone, checkpoint_build_options, create_backbone
from finetune.training.freeze import build_schedule, frozen_param_names
from finetune.training.losses import mixed_soft_targets, training_loss
from finetune.training.monitor import BalancedAccuracy, class_recalls
from finetune.training.optim import build_optimizer, discriminative_mults, param_groups
from finetune.training.precision import resolve_channels_last
from finetune.training.regularization import backbone_options, build_mixer, build_teacher, mixing_on
from finetune.training.schedules import ScheduleFactor
from finetune.training.teacher import Teacher


class FinetuneModule(pl.LightningModule):
    """Fine-tunes a pretrained backbone on a classification task.

    Usable with any `pl.Trainer`; `finetune.fit` is one such use.

    Args:
        config: The run settings (backbone, weights, freeze_until, optimizer...).
        class_names: Class names in label-index order; their count sizes the head.
        backbone: A backbone already built (skips `create_backbone`, e.g. when loading a checkpoint).
        teacher: A distillation teacher already loaded (default: the one `config.teacher` names).
            It is kept out of the registered children: never optimized, never in checkpoints.
        class_weights: Per-class weights of the training loss (--class-weights), shape (C,), or None.
            Not saved in checkpoints: `finetune.fit` derives them from the data again on resume.

    Example:
        >>> dm = ImageFolderDataModule("data/", data_config)          # doctest: +SKIP
        >>> module = FinetuneModule(RunConfig(backbone="resnet18", data="data/"), dm.classes)
        >>> pl.Trainer(max_epochs=3).fit(module, dm)
    """

    def __init__(self, config: RunConfig | dict[str, Any], class_names: Sequence[str], backbone: Backbone | None = None,
                 teacher: Teacher | None = None, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.config = config if isinstance(config, RunConfig) else RunConfig.model_validate(config)
        self.class_names = list(class_names)
        self.save_hyperparameters({"config": self.config.model_dump(mode="json"), "class_names": self.class_names})
        self.load_report = None
        if backbone is None:
            backbone, self.load_report = create_backbone(
                self.config.backbone, len(self.class_names), self.config.weights, weights_dir=self.config.weights_dir,
                **backbone_options(self.config),
            )
        self.backbone = backbone
        self.criterion = nn.CrossEntropyLoss()  # validation: plain CE on hard labels
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float(), persistent=False)
        self.mixer = build_mixer(self.config)
        self.teacher = teacher or build_teacher(self.config, self.class_names, self.input_config)
        if self.teacher is not None:
            self.teacher.check_classes(self.class_names)
        self._make_metrics(len(self.class_names))
        self._eval_modules: list[nn.Module] = []
        self.frozen_units = 0
        self.frozen_param_names: frozenset[str] = frozenset()
        self.grad_mask_mode = False  # see setup(): how DDP runs freeze
        self.freeze_schedule = build_schedule(self.config, backbone)
        self.set_frozen_units(self.freeze_schedule.initial)
        self.use_channels_last = False

    def _make_metrics(self, num_classes: int) -> None:
        top5 = min(5, num_classes)  # top-k is capped at the class count: top-5 of 3 classes is meaningless
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        # Per-class figures (--monitor balanced-acc / macro-f1): a rare class the model never gets right
        # hardly moves top-1 but shows in the mean of the class recalls.
        self.val_balanced_acc = BalancedAccuracy(num_classes)
        self.val_macro_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)  # for each class's recall
        self.val_loss = MeanMetric()  # weighted by batch size: a short last batch counts for its images

    def monitor_value(self, monitor: str) -> torch.Tensor:
        """This validation's figure for --monitor (computed, synced across processes by torchmetrics)."""
        metric = {"acc1": self.val_acc1, "balanced-acc": self.val_balanced_acc, "macro-f1": self.val_macro_f1,
                  "loss": self.val_loss}[monitor]
        return metric.compute()

    # ----- freezing -------------------------------------------------------------------------
    def set_frozen_units(self, n: int, train_bn: bool | None = None) -> None:
        """Freezes the first `n` units of the backbone and lets every later unit train.

        Frozen units run in eval mode: BatchNorm running statistics stay bit-identical, and
        dropout and drop-path are off, so the frozen part computes a fixed function. `train()`
        re-applies this, since Lightning calls it around every validation loop. With `train_bn`
        (default: the config's --train-bn / bn-only) their BatchNorm layers keep training
        (affine parameters and running statistics); everything else in them stays in eval mode.
        """
        train_bn = self.freeze_schedule.train_bn if train_bn is None else train_bn
        frozen = frozen_param_names(self.backbone, n, train_bn)
        for name, p in self.backbone.model.named_parameters():
            p.requires_grad_(self.grad_mask_mode or name not in frozen)
        self.frozen_units, self.frozen_param_names = n, frozen
        self._eval_modules = self._modules_kept_in_eval(n, train_bn)
        self.train(self.training)

    def is_trainable(self, name: str) -> bool:
        """Whether parameter `name` (relative to `backbone.model`) trains in the current freeze state."""
        return name not in self.frozen_param_names

    def _modules_kept_in_eval(self, n: int, train_bn: bool) -> list[nn.Module]:
        """Every module inside the first `n` units (their BatchNorm layers excepted with `train_bn`).

        Units are looked up as modules, not matched as name prefixes: "features.1" must not
        catch "features.10".
        """
        model, keep_bn = self.backbone.model, nn.modules.batchnorm._BatchNorm if train_bn else ()
        return [m for u in self.backbone.units[:n] for m in model.get_submodule(u.name).modules()
                if not isinstance(m, keep_bn)]

    def train(self, mode: bool = True) -> "FinetuneModule":
        super().train(mode)
        if mode:
            for module in self._eval_modules:
                module.training = False  # not .eval(): that would recurse into BatchNorm kept training
        return self

    # ----- steps ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes) logits."""
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    @property
    def input_config(self) -> DataConfig:
        """The preprocessing of the training inputs (the backbone's, at --image-size)."""
        return self.backbone.data_config.with_size(self.config.image_size)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mixes the batch, builds soft targets (smoothed once), adds the teacher's KD term."""
        x, y, cfg = *batch, self.config
        mixing = self.mixer is not None and mixing_on(cfg, self.current_epoch)
        mixed = self.mixer(x, y) if mixing else MixedBatch.unmixed(x, y)
        target = mixed_soft_targets(mixed.y, mixed.y_partner, mixed.lam, len(self.class_names), cfg.label_smoothing)
        logits = self(mixed.x)
        teacher_logits = self.teacher.logits(mixed.x, self.input_config) if self.teacher is not None else None
        parts = training_loss(logits, target, teacher_logits, cfg.kd_alpha, cfg.kd_temperature, self.class_weights)
        self.train_acc1(logits, target.argmax(dim=1))  # the dominant label of a mixed image
        self._log_train("train/loss", parts.total, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        if parts.kd is not None:
            self._log_train("train/task_loss", parts.task)
            self._log_train("train/kd_loss", parts.kd)
        return parts.total

    def _log_train(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """Logs NAME_step (this process's value) and NAME_epoch (the mean over every process).

        Only the epoch mean is synced: `sync_dist` on a per-step value all-reduces every step.
        """
        self.log(f"{name}_step", value, on_step=True, on_epoch=False, prog_bar=prog_bar)
        self.log(f"{name}_epoch", value, on_step=False, on_epoch=True, prog_bar=prog_bar, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        for metric in (self.val_acc1, self.val_acc5, self.val_balanced_acc, self.val_macro_f1, self.val_confusion):
            metric.update(logits, y)
        self.val_loss.update(self.criterion(logits.float(), y), weight=len(y))
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc1", self.val_acc1, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)
        self.log("val/balanced_acc", self.val_balanced_acc, on_epoch=True)
        self.log("val/macro_f1", self.val_macro_f1, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        """Logs the recall of each class as val/recall/<class> (a vector metric cannot go through self.log);
        NaN for a class with no validation image."""
        recall = class_recalls(self.val_confusion.compute())
        self.val_confusion.reset()
        for name, value in zip(self.class_names, recall):
            self.log(f"val/recall/{name}", value)

    # ----- setup ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        # Before the strategy wraps the model: converting after DDP has registered the parameters
        # would leave its gradient buckets in the old layout.
        self.use_channels_last = resolve_channels_last(self.config.channels_last, str(self.trainer.precision))
        if self.use_channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def setup(self, stage: str) -> None:
        # DDP registers only the parameters that require grad when it wraps the model, and
        # requires_grad changes are not synced between processes (Lightning #20340): a group
        # unfrozen later would train unsynchronised. With unfreezing ahead under a parallel
        # strategy every parameter requires grad and frozen ones lose their gradient before the
        # optimizer step instead (on_before_optimizer_step): no update, no weight decay, and
        # their BatchNorm layers stay in eval mode, so they remain bit-identical.
        parallel = isinstance(self.trainer.strategy, pl.strategies.ParallelStrategy)
        if parallel and self.freeze_schedule.milestones and not self.grad_mask_mode:
            self.grad_mask_mode = True
            self.set_frozen_units(self.frozen_units)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.grad_mask_mode:
            params = dict(self.backbone.model.named_parameters())
            for name in self.frozen_param_names:
                params[name].grad = None  # torch optimizers skip parameters without a gradient

    def lr_mults(self) -> list[float]:
        """LR multiplier of each layer group relative to the head's LR (--lr-decay / --backbone-lr-mult)."""
        return discriminative_mults(len(self.backbone.groups), self.config.lr_decay, self.config.resolved_backbone_lr_mult())

    def head_lr(self, world_size: int | None = None) -> float:
        """The head's peak LR: --lr, times global batch / 256 with --scale-lr (the linear scaling rule)."""
        if self.config.lr == "auto":
            raise FinetuneError("lr is 'auto': run finetune.run.lr_find.find_lr first and set config.lr")
        if world_size is None:
            world_size = self._trainer.world_size if self._trainer is not None else 1
        if self.config.scale_lr and self.config.batch_size is None:
            raise FinetuneError("--scale-lr scales the LR by the batch size: set config.batch_size (finetune.fit "
                                "resolves it from the data before building the module)")
        scale = self.config.batch_size * world_size / 256 if self.config.scale_lr else 1.0
        return float(self.config.lr) * scale

    def configure_optimizers(self) -> dict[str, Any]:
        cfg, lr = self.config, self.head_lr()
        groups = param_groups(self.backbone, lr, cfg.weight_decay, self.lr_mults())
        optimizer = build_optimizer(cfg.optimizer, groups, lr, cfg.momentum, cfg.nesterov)
        factor = self._schedule_factor(lr)
        # A plain function, not the callable object: LambdaLR would then save the factor's fields and
        # a resume with more --epochs would restore the old schedule length.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_factor(self, lr: float) -> ScheduleFactor:
        cfg, trainer = self.config, self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))
        per_epoch = max(1, total // trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else total
        return ScheduleFactor(cfg.schedule, total, per_epoch, round(cfg.warmup_epochs * per_epoch),
                              cfg.step_size, cfg.gamma, min(1.0, cfg.min_lr / lr))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["finetune"] = {
            "backbone": self.backbone.name,
            "class_names": self.class_names,
            "data_config": self.backbone.data_config.with_size(self.config.image_size).to_dict(),
            "frozen_units": self.frozen_units,
            "build_options": self.backbone.build_options,
        }

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> "FinetuneModule":
        """Rebuilds a module from a checkpoint written by this toolkit, without touching the hub.

        The network is built with the options it was trained with (`Backbone.build_options`).
        """
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        hparams = ckpt["hyper_parameters"]
        # Without its teacher the saved kd_* settings are unused; this rebuild is for inference, so allow them.
        config = RunConfig.model_validate({**hparams["config"], "weights": "none", "teacher": None},
                                          context={"unused": "allow"})
        backbone, _ = create_backbone(config.backbone, len(hparams["class_names"]), "none",
                                      build_options=checkpoint_build_options(ckpt), **backbone_options(config))
        module = cls(config, hparams["class_names"], backbone=backbone)
        module.load_state_dict(ckpt["state_dict"])
        return module
