"""The LightningModule: a backbone with a new head, a freeze boundary, metrics and optimizer groups."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.mixing import BatchMixer, MixedBatch
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone, create_backbone, rebuild_backbone
from finetune.training.checkpoint_format import (
    ModuleParts,
    SavedCheckpoint,
    hyperparameters,
    migrate,
    read_checkpoint,
    write_record,
)
from finetune.training.feature_split import FeatureSplit
from finetune.training.freeze import FreezeSchedule, build_schedule, frozen_param_names
from finetune.training.losses import LossSpec, mixed_soft_targets, training_loss
from finetune.training.monitor import BalancedAccuracy, class_recalls
from finetune.training.optim import OptimizerSpec, build_optimizer, discriminative_mults, param_groups
from finetune.training.precision import resolve_channels_last
from finetune.training.schedules import ScheduleFactor, ScheduleSpec
from finetune.training.teacher import Teacher, load_teacher


def backbone_options(config: RunConfig) -> dict[str, Any]:
    """`create_backbone` keyword arguments: head dropout, stochastic depth (None: the default), partial weights."""
    return {"drop_rate": config.head_dropout, "drop_path_rate": config.drop_path or None,
            "weights_partial": config.weights_partial}


def build_mixer(config: RunConfig) -> BatchMixer | None:
    """The batch mixer, or None when neither mixup nor cutmix is on."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return BatchMixer(config.mixup, config.cutmix, config.mix_prob, config.mix_switch_prob)


class FinetuneModule(pl.LightningModule):
    """Fine-tunes a pretrained backbone on a classification task, built from its parts.

    Usable with any `pl.Trainer`; `finetune.fit` is one such use. `from_config` builds the parts
    from a RunConfig; `from_checkpoint` rebuilds a trained module for inference.

    Args:
        backbone: The network with its new head (`create_backbone`).
        class_names: Class names in label-index order; their count is the head's size.
        optimizer: Optimizer, head LR and each layer group's LR multiplier.
        schedule: LR schedule (one factor for every group).
        loss: Label smoothing and the distillation weights.
        freeze: The frozen part over the epochs (default: nothing frozen).
        mixer: Mixup/CutMix of training batches, or None.
        mix_off_epoch: No mixing from this (0-based) epoch on; 0: every epoch.
        teacher: A distillation teacher. It is kept out of the registered children: never
            optimized, never in checkpoints.
        class_weights: Per-class weights of the training loss, shape (C,), or None. Not saved in
            checkpoints: `finetune.fit` derives them from the data again on resume.
        image_size: Input side the network trains at (None: the backbone's own).
        channels_last: NHWC memory format; None: on with mixed precision.
        record: The run's settings as plain data (`RunPlan.record()`, with its "config"), kept in
            checkpoints so that evaluation and export know the run's data split and TTA.

    Example:
        >>> module = FinetuneModule.from_config(  # doctest: +SKIP
        ...     RunConfig(backbone="resnet18", data="data/"), dm.classes)
        >>> pl.Trainer(max_epochs=3).fit(module, dm)
    """

    def __init__(self, backbone: Backbone, class_names: Sequence[str], *, optimizer: OptimizerSpec,
                 schedule: ScheduleSpec = ScheduleSpec(), loss: LossSpec = LossSpec(),
                 freeze: FreezeSchedule | None = None,
                 mixer: BatchMixer | None = None, mix_off_epoch: int = 0, teacher: Teacher | None = None,
                 class_weights: torch.Tensor | None = None, image_size: int | None = None,
                 channels_last: bool | None = None, record: Mapping[str, Any] | None = None):
        super().__init__()
        self.class_names = list(class_names)
        self.optimizer_spec, self.schedule_spec, self.loss_spec = optimizer, schedule, loss
        self.image_size, self.channels_last = image_size, channels_last
        self.mixer, self.mix_off_epoch = mixer, mix_off_epoch
        self.record = dict(record or {})
        self.save_hyperparameters(hyperparameters(self.class_names, self.record.get("config"),
                                                  ModuleParts(optimizer, schedule, loss, image_size, channels_last)))
        self.load_report = None
        self.backbone = backbone
        self.criterion = nn.CrossEntropyLoss()  # validation: plain CE on hard labels
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float(),
                             persistent=False)
        self.teacher = teacher
        if self.teacher is not None:
            self.teacher.check_classes(self.class_names)
        self._make_metrics(len(self.class_names))
        self._eval_modules: list[nn.Module] = []
        self.frozen_units = 0
        self.frozen_param_names: frozenset[str] = frozenset()
        self.grad_mask_mode = False  # see setup(): how DDP runs freeze
        self.freeze_schedule = freeze or FreezeSchedule(0)
        self.set_frozen_units(self.freeze_schedule.initial)
        self.use_channels_last = False
        # With the frozen-feature cache, batches are the frozen part's stored output and only the rest runs
        # (a plain attribute: its graphs share the backbone's modules and must not be registered twice).
        self.feature_split: FeatureSplit | None = None

    @property
    def config(self) -> RunConfig | None:
        """The run settings this module was built from (None for a module built from parts alone)."""
        saved = self.record.get("config")
        if saved is None:
            return None
        # A rebuilt module has no teacher: its saved kd_* settings are unused, which is fine for a record.
        return RunConfig.from_record(saved)

    @classmethod
    def from_config(cls, config: RunConfig, class_names: Sequence[str], *, backbone: Backbone | None = None,
                    teacher: Teacher | None = None, class_weights: torch.Tensor | None = None,
                    record: Mapping[str, Any] | None = None) -> "FinetuneModule":
        """The module a RunConfig describes: its parts built from the settings.

        Args:
            config: The run settings; `lr` must be a number (resolve `auto` first, as `finetune.fit` does).
            class_names: Class names in label-index order.
            backbone: A backbone already built (default: `create_backbone` with the config's weights).
            teacher: A distillation teacher already loaded (default: the one `config.teacher` names).
            class_weights: Per-class weights of the training loss, or None.
            record: What to keep in checkpoints (default: the config).
        """
        if config.lr == "auto":
            raise FinetuneError("lr is 'auto': run finetune.run.lr_find.find_lr first and set config.lr")
        load_report = None
        if backbone is None:
            backbone, load_report = create_backbone(config.backbone, len(class_names), config.weights,
                                                    weights_dir=config.weights_dir, **backbone_options(config))
        image_size = config.image_size
        if teacher is None and config.teacher is not None:
            teacher = load_teacher(config.teacher, class_names, config.teacher_weights,
                                   backbone.data_config.with_size(image_size))
        mults = discriminative_mults(len(backbone.groups), config.lr_decay, config.resolved_backbone_lr_mult())
        module = cls(
            backbone, class_names,
            optimizer=OptimizerSpec(config.optimizer, float(config.lr), tuple(mults), config.weight_decay,
                                    config.momentum, config.nesterov, config.scale_lr, config.batch_size),
            schedule=ScheduleSpec(config.schedule, config.warmup_epochs, config.step_size, config.gamma, config.min_lr),
            loss=LossSpec(config.label_smoothing, config.kd_alpha, config.kd_temperature),
            freeze=build_schedule(config, backbone), mixer=build_mixer(config), mix_off_epoch=config.mix_off_epoch,
            teacher=teacher, class_weights=class_weights, image_size=image_size, channels_last=config.channels_last,
            record=record or {"config": config.model_dump(mode="json")},
        )
        module.load_report = load_report
        return module

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
        """(B, 3, H, W) normalised images -> (B, num_classes) logits; with `feature_split`, stored features."""
        if self.use_channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.feature_split is not None:
            return self.feature_split.rest(x, self.training)
        return self.backbone(x)

    @property
    def input_config(self) -> DataConfig:
        """The preprocessing of the training inputs (the backbone's, at --image-size)."""
        return self.backbone.data_config.with_size(self.image_size)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mixes the batch, builds soft targets (smoothed once), adds the teacher's KD term."""
        x, y = batch
        mixing = self.mixes_in(self.current_epoch)
        mixed = self.mixer(x, y) if mixing else MixedBatch.unmixed(x, y)
        spec = self.loss_spec
        target = mixed_soft_targets(mixed.y, mixed.y_partner, mixed.lam, len(self.class_names), spec.label_smoothing)
        logits = self(mixed.x)
        teacher_logits = self.teacher.logits(mixed.x, self.input_config) if self.teacher is not None else None
        parts = training_loss(logits, target, teacher_logits, spec.kd_alpha, spec.kd_temperature, self.class_weights)
        self.train_acc1.update(logits, target.argmax(dim=1))  # the dominant label of a mixed image
        self._log_train("train/loss", parts.total, prog_bar=True)
        if batch_idx == 0:
            # Logged once: Lightning computes and resets a logged metric at the epoch's end, and each log
            # call costs about a millisecond, as much as a whole step on cached features.
            self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        if parts.kd is not None:
            self._log_train("train/task_loss", parts.task)
            self._log_train("train/kd_loss", parts.kd)
        return parts.total

    def mixes_in(self, epoch: int) -> bool:
        """Whether training batches of `epoch` (0-based) are mixed: with a mixer, until --mix-off-epoch if set."""
        return self.mixer is not None and (self.mix_off_epoch == 0 or epoch < self.mix_off_epoch)

    def _log_train(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """Logs NAME_step (this process's value) and NAME_epoch (the mean over every process).

        Only the epoch mean is synced: `sync_dist` on a per-step value all-reduces every step. In one
        process, one call logs both (Lightning adds the suffixes): a log call costs about a millisecond.
        """
        if self._trainer is None or self._trainer.world_size == 1:
            self.log(name, value, on_step=True, on_epoch=True, prog_bar=prog_bar)
            return
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
        self.use_channels_last = resolve_channels_last(self.channels_last, str(self.trainer.precision))
        if self.use_channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_train_epoch_start(self) -> None:
        show_view = getattr(self.trainer.datamodule, "show_view", None)  # --cache-views: this epoch's view
        if show_view is not None:
            show_view(self.current_epoch)

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
        return list(self.optimizer_spec.lr_mults)

    def head_lr(self, world_size: int | None = None) -> float:
        """The head's peak LR: --lr, times global batch / 256 with --scale-lr (the linear scaling rule)."""
        if world_size is None:
            world_size = self._trainer.world_size if self._trainer is not None else 1
        return self.optimizer_spec.head_lr(world_size)

    def configure_optimizers(self) -> dict[str, Any]:
        spec, lr = self.optimizer_spec, self.head_lr()
        groups = param_groups(self.backbone, lr, spec.weight_decay, self.lr_mults())
        optimizer = build_optimizer(spec.name, groups, lr, spec.momentum, spec.nesterov)
        factor = self._schedule_factor(lr)
        # A plain function, not the callable object: LambdaLR would then save the factor's fields and
        # a resume with more --epochs would restore the old schedule length.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_factor(self, lr: float) -> ScheduleFactor:
        trainer = self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))
        per_epoch = max(1, total // trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else total
        return self.schedule_spec.factor(lr, total, per_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The plan's resolved values and sources go with the weights, not into the hyperparameters that
        # Lightning also sends to TensorBoard/MLflow: per-class counts and weights would be thousands of params.
        write_record(checkpoint, plan={k: v for k, v in self.record.items() if k != "config"},
                     backbone=self.backbone.name, class_names=self.class_names,
                     data_config=self.input_config.to_dict(), frozen_units=self.frozen_units,
                     build_options=self.backbone.build_options)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        migrate(checkpoint)  # --resume: Lightning loads the file itself; older layouts are upgraded first

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> "FinetuneModule":
        """Rebuilds a module from a checkpoint written by this toolkit, without touching the hub.

        Raises:
            FinetuneError: The file does not load as a checkpoint of this toolkit (`read_checkpoint`),
                or it names a backbone that is not installed code (`rebuild_backbone`).
        """
        return cls.from_saved(read_checkpoint(Path(path), map_location=map_location))

    @classmethod
    def from_saved(cls, saved: SavedCheckpoint) -> "FinetuneModule":
        """Rebuilds a module from a checkpoint read by `read_checkpoint`: the network with the options it was
        trained with (`Backbone.build_options`), the parts as saved, then the weights.

        Raises:
            FinetuneError: It names a backbone that is not installed code (`rebuild_backbone`).
        """
        parts = saved.parts
        record = {**saved.plan, **({"config": saved.config} if saved.config is not None else {})}
        backbone, _ = rebuild_backbone(saved.backbone, len(saved.class_names), "none", saved.build_options,
                                       str(saved.path))
        module = cls(backbone, saved.class_names, optimizer=parts.optimizer, schedule=parts.schedule, loss=parts.loss,
                     image_size=parts.image_size, channels_last=parts.channels_last, record=record)
        module.load_state_dict(saved.state_dict)
        return module
