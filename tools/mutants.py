"""The mutants of tools/mutate.py: realistic bugs in behaviour users rely on, one snippet each.

Each mutant replaces one exact snippet (it must occur exactly once in its file) and names the tests
that should notice, fastest first: pytest stops at the first failure. Keep snippets small, so
unrelated edits to the same file do not make a mutant stale. When a bug is fixed, add its mutant.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One planted bug.

    Attributes:
        name: Short identifier (for --only).
        file: Path relative to the repository root.
        old: Exact source snippet to replace; must occur exactly once.
        new: The buggy replacement.
        tests: pytest paths or node ids run against the mutant.
        description: The bug, as a user would experience it.
    """

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    description: str


TTA = "finetune/data/tta.py"
SCHED = "finetune/training/schedules.py"
LOSSES = "finetune/training/losses.py"
MIXING = "finetune/data/mixing.py"
EMA = "finetune/training/callbacks/ema.py"
FREEZE = "finetune/training/freeze.py"
UNFREEZE = "finetune/training/callbacks/unfreeze.py"
MODULE = "finetune/training/module.py"

T_TTA = "tests/data/test_tta.py"
T_PREP = "tests/test_inference_preprocessing.py"
T_SCHED = "tests/training/test_schedules.py"
T_DLR = "tests/training/test_discriminative_lr.py"
T_LOSSES = "tests/training/test_losses.py"
T_MIX = "tests/data/test_mixing.py"
T_EMA = "tests/training/test_ema.py"
T_POLICIES = "tests/training/test_freeze_policies.py"
T_UNFREEZE = "tests/training/test_unfreeze.py"
T_SCAN = "tests/data/test_scan.py"

MUTANTS: list[Mutant] = [
    # ----- TTA and inference preprocessing -------------------------------------------------
    Mutant("tta_averages_logits", "finetune/inference.py",
           "average_views(softmax(logits, self.temperature), view_count(tta))",
           "softmax(average_views(logits, view_count(tta)), self.temperature)",
           (T_TTA,), "TTA averages the views' logits instead of their probabilities"),
    Mutant("tta_flip_is_identity", TTA,
           "return [view, hflip(view)] if tta == \"flip\" else [view]",
           "return [view, view] if tta == \"flip\" else [view]",
           (T_TTA,), "--tta flip feeds the same view twice"),
    Mutant("tta_tencrop_without_mirrors", TTA,
           "crops + [hflip(c) for c in crops]", "crops + crops",
           (T_TTA,), "ten-crop repeats the five crops instead of adding their mirrors"),
    Mutant("temperature_ignored", TTA,
           "z = logits.astype(np.float64) / temperature", "z = logits.astype(np.float64)",
           (T_TTA,), "the calibrated temperature in a bundle has no effect on probabilities"),
    Mutant("eval_resize_ignores_crop_pct", TTA,
           "pil_resize_shorter(img, dc.resize_size, dc.interpolation)",
           "pil_resize_shorter(img, dc.input_size, dc.interpolation)",
           (T_TTA,), "inference resizes straight to the input size, unlike the training eval transform"),
    Mutant("normalize_swaps_height_width", TTA,
           ".transpose(0, 3, 1, 2)", ".transpose(0, 3, 2, 1)",
           (T_TTA,), "inference inputs are transposed (NCWH instead of NCHW)"),
    Mutant("normalize_hardcodes_imagenet_mean", TTA,
           "mean = np.asarray(dc.mean, np.float32)", "mean = np.asarray((0.485, 0.456, 0.406), np.float32)",
           (T_PREP, T_TTA), "inference normalises with ImageNet's mean instead of the model's"),
    Mutant("predictor_loads_imagenet_stats", "finetune/inference.py",
           "return cls(runner, config.class_names, config.data_config,",
           "return cls(runner, config.class_names, DataConfig.from_dict({**config.data_config.to_dict(), "
           "\"mean\": (0.485, 0.456, 0.406), \"std\": (0.229, 0.224, 0.225)}),",
           (T_PREP,), "Predictor.load ignores the bundle's mean/std and uses ImageNet's"),
    # ----- export parity ---------------------------------------------------------------------
    Mutant("export_copy_in_train_mode", "finetune/bundling/bundle.py",
           "copy.deepcopy(backbone).float().cpu().eval()", "copy.deepcopy(backbone).float().cpu()",
           (T_PREP,), "the exported network is traced/referenced with BatchNorm in train mode"),
    Mutant("parity_tolerance_loosened", "finetune/bundling/parity.py",
           "PARITY_TOLERANCE = 1e-3", "PARITY_TOLERANCE = 1.0",
           ("tests/evaluation/test_bundle.py::test_parity_above_bound_fails_the_export",),
           "an exported graph whose logits differ by 0.1 passes the parity check"),
    # ----- LR schedules ----------------------------------------------------------------------
    Mutant("onecycle_ignores_warmup", SCHED,
           "rise = self.warmup_steps or max(", "rise = 0 or max(",
           (T_SCHED,), "onecycle ignores --warmup-epochs and peaks at 30% of the run"),
    Mutant("warmup_starts_at_zero", SCHED,
           "return (step + 1) / (self.warmup_steps + 1)", "return step / self.warmup_steps",
           (T_SCHED,), "the first warm-up step has LR 0: a wasted step"),
    Mutant("cosine_ignores_min_lr", SCHED,
           "return _cosine(1.0, self.min_factor, progress)", "return _cosine(1.0, 0.0, progress)",
           (f"{T_DLR}::test_warmup_and_min_lr", T_SCHED), "cosine decays to 0 despite --min-lr"),
    Mutant("step_schedule_counts_steps", SCHED,
           "drops = (step // max(1, self.steps_per_epoch)) // self.step_size",
           "drops = step // self.step_size",
           (f"{T_DLR}::test_schedule_shapes",), "--step-size counts optimizer steps instead of epochs"),
    Mutant("warmup_epochs_taken_as_steps", "finetune/training/schedules.py",
           "round(self.warmup_epochs * steps_per_epoch)", "round(self.warmup_epochs)",
           (f"{T_SCHED}::test_onecycle_run_peaks_after_the_warmup_epoch",),
           "--warmup-epochs 1 warms up for one optimizer step"),
    Mutant("lr_decay_reversed", "finetune/training/optim.py",
           "lr_decay ** (num_groups - 1 - i)", "lr_decay ** i",
           (f"{T_DLR}::test_lr_decay_multiplies_per_group_and_replaces_backbone_mult",),
           "--lr-decay gives the stem the head's LR and the head the smallest"),
    # ----- losses ------------------------------------------------------------------------------
    Mutant("smoothing_over_other_classes", LOSSES,
           "off = smoothing / num_classes", "off = smoothing / (num_classes - 1)",
           (T_LOSSES,), "label smoothing spreads eps over C-1 classes: not torch's definition, rows sum != 1"),
    Mutant("mix_targets_ignore_partner", LOSSES,
           "return lam * target + (1.0 - lam) * smooth_one_hot(y_partner, num_classes, smoothing)",
           "return target",
           (T_LOSSES,), "mixup/cutmix targets keep only the original label"),
    Mutant("kd_without_t_squared", LOSSES,
           "return kl * temperature**2", "return kl",
           (T_LOSSES,), "the KD term lacks Hinton's T^2 factor: its weight shrinks with T"),
    Mutant("kd_alpha_swapped", LOSSES,
           "(1.0 - kd_alpha) * task + kd_alpha * kd", "kd_alpha * task + (1.0 - kd_alpha) * kd",
           (T_LOSSES,), "--kd-alpha weights the task loss instead of the distillation term"),
    Mutant("kd_teacher_not_softened", LOSSES,
           "F.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)",
           "F.log_softmax(teacher_logits.float().detach(), dim=-1)",
           (T_LOSSES,), "the teacher's logits are not divided by the KD temperature"),
    Mutant("module_drops_label_smoothing", MODULE,
           "len(self.class_names), spec.label_smoothing)", "len(self.class_names), 0.0)",
           (f"{T_LOSSES}::test_module_loss_smooths_once_with_mixing_and_distills",),
           "--label-smoothing is parsed but the training loss never smooths"),
    Mutant("module_never_mixes", MODULE,
           "mixing = self.mixes_in(self.current_epoch)", "mixing = False and self.mixes_in(self.current_epoch)",
           ("tests/training/test_mixing_run.py",),
           "--mixup/--cutmix are parsed and the mixer built, but no batch is mixed"),
    Mutant("module_trains_on_unmixed_images", MODULE,
           "logits = self(mixed.x)", "logits = self(x)",
           (f"{T_LOSSES}::test_module_loss_smooths_once_with_mixing_and_distills",),
           "mixed targets are paired with the unmixed images"),
    # ----- mixing --------------------------------------------------------------------------------
    Mutant("mixup_partner_labels_unpermuted", MIXING,
           "x[perm] * (1.0 - lam), y, y[perm], lam, mode)", "x[perm] * (1.0 - lam), y, y, lam, mode)",
           (T_MIX,), "mixup mixes images but reports the original labels as the partners'"),
    Mutant("cutmix_lambda_inverted", MIXING,
           "lam = 1.0 - (bottom - top) * (right - left) / (height * width)",
           "lam = (bottom - top) * (right - left) / (height * width)",
           (T_MIX,), "cutmix's lambda is the pasted share instead of the kept share"),
    Mutant("cutmix_box_side_linear", MIXING,
           "cut = math.sqrt(1.0 - lam)", "cut = 1.0 - lam",
           (T_MIX,), "cutmix boxes cover (1 - lam)^2 of the image: far less mixing than asked"),
    Mutant("mix_prob_ignored", MIXING,
           "if not self.enabled or self._uniform() >= self.prob:", "if not self.enabled:",
           (T_MIX,), "--mix-prob is ignored: every batch is mixed"),
    Mutant("mix_off_epoch_ignored", "finetune/training/module.py",
           "(self.mix_off_epoch == 0 or epoch < self.mix_off_epoch)", "True",
           (f"{T_LOSSES}::test_mix_off_epoch",), "--mix-off-epoch never stops mixing"),
    # ----- EMA -----------------------------------------------------------------------------------
    Mutant("ema_averages_frozen_params", EMA,
           "for n, p in model.named_parameters() if p.requires_grad]", "for n, p in model.named_parameters()]",
           (T_EMA,), "the EMA also averages frozen parameters"),
    Mutant("ema_weight_inverted", EMA,
           "weight = 1.0 - self.decay_at(self.steps)", "weight = self.decay_at(self.steps)",
           (T_EMA,), "the EMA moves by decay instead of 1 - decay per step"),
    Mutant("ema_copies_batchnorm_statistics", EMA,
           "if buf.is_floating_point():", "if False:",
           (f"{T_EMA}::test_batchnorm_running_statistics_are_averaged_and_counters_copied",),
           "the EMA copies the raw running statistics instead of averaging them"),
    Mutant("ema_warmup_flag_inverted", EMA,
           "if not self.warmup:", "if self.warmup:",
           (T_EMA,), "--no-ema-warmup warms up and --ema-warmup does not"),
    Mutant("ema_winner_not_checkpointed", EMA,
           "if self.ema_won:\n            sd = checkpoint", "if False:\n            sd = checkpoint",
           (T_EMA,), "best.ckpt keeps the raw weights even when the EMA scored higher"),
    Mutant("ema_resume_keeps_ema_weights", EMA,
           "pl_module.load_state_dict(state[\"raw_state_dict\"], strict=False)", "pass",
           (T_EMA,), "a resumed run trains on from the EMA weights instead of the raw ones"),
    # ----- freezing and unfreezing ---------------------------------------------------------------
    Mutant("freeze_until_off_by_one", FREEZE,
           "for unit in backbone.units[:n] for p", "for unit in backbone.units[:n - 1] for p",
           (T_POLICIES,), "--freeze-until layer3 leaves layer2 training"),
    Mutant("train_bn_ignored", FREEZE,
           "names -= norm_param_names(backbone.model)", "pass",
           (T_POLICIES,), "--train-bn / bn-only leave BatchNorm frozen"),
    Mutant("frozen_units_left_in_train_mode", MODULE,
           "module.training = False", "pass",
           (f"{T_POLICIES}::test_train_bn_both_ways",),
           "frozen BatchNorm layers update their running statistics (and dropout stays on)"),
    Mutant("unfreeze_every_ignored", FREEZE,
           "(first + i * config.unfreeze_every, b)", "(first + i, b)",
           (f"{T_UNFREEZE}::test_unfreeze_every_adds_one_group_from_the_top",),
           "after the first group, --unfreeze-every unfreezes one group per epoch"),
    Mutant("freeze_epochs_ignored_with_unfreeze_every", FREEZE,
           "first = config.freeze_epochs if config.freeze_epochs is not None else config.unfreeze_every",
           "first = config.unfreeze_every",
           (f"{T_UNFREEZE}::test_unfreeze_every_adds_one_group_from_the_top",),
           "--freeze-epochs is ignored when --unfreeze-every is given"),
    Mutant("resume_forgets_frozen_units", UNFREEZE,
           "self.frozen_units = state_dict[\"frozen_units\"]", "self.frozen_units = None",
           (f"{T_UNFREEZE}::test_restored_callback_puts_the_module_back_in_its_frozen_state",),
           "a resumed run restarts from the initial freeze state (unfreezes two groups at once)"),
    Mutant("resume_does_not_apply_frozen_units", UNFREEZE,
           "pl_module.set_frozen_units(self.frozen_units)", "pass",
           (f"{T_UNFREEZE}::test_restored_callback_puts_the_module_back_in_its_frozen_state",),
           "the restored freeze state is kept in the callback but never applied to the module"),
    Mutant("resume_loses_unfreeze_history", UNFREEZE,
           "\"history\": list(self.history)}", "\"history\": []}",
           (f"{T_UNFREEZE}::test_restored_callback_puts_the_module_back_in_its_frozen_state",),
           "the unfreezing history is not saved in checkpoints"),
    # ----- splitting -----------------------------------------------------------------------------
    Mutant("split_floors_instead_of_rounding", "finetune/data/scan.py",
           "round(len(paths) * val_split)", "int(len(paths) * val_split)",
           (f"{T_SCAN}::test_flat_layout_stratified",), "val holds fewer images per class than --val-split asks"),
    Mutant("split_not_stratified", "finetune/data/scan.py",
           "    in_val: set[Path] = set()\n",
           "    shuffled = np.random.default_rng(seed).permutation(len(items))\n"
           "    in_val = {items[i][0] for i in shuffled[:round(len(items) * val_split)]}\n"
           "    return [it for it in items if it[0] not in in_val], [it for it in items if it[0] in in_val]\n",
           (f"{T_SCAN}::test_flat_layout_stratified",),
           "the flat-layout split shuffles all images together: classes lose their share"),
    Mutant("split_ignores_seed", "finetune/data/scan.py",
           "default_rng([seed, zlib.crc32(name.encode())])", "default_rng(zlib.crc32(name.encode()))",
           (f"{T_SCAN}::test_split_is_seeded",), "--seed does not change the train/val split"),
    # ----- data loading, weights, precision, rebuilds -------------------------------------------
    Mutant("last_batch_of_one_kept", "finetune/data/datamodule.py",
           "drop_last=shuffle and self._last_batch_of_one(", "drop_last=False and self._last_batch_of_one(",
           ("tests/training/test_last_batch.py",), "a last training batch of one image reaches BatchNorm"),
    Mutant("limit_train_batches_1_means_all", "finetune/config.py",
           "                v = int(v)\n            except ValueError:",
           "                v = float(v)\n            except ValueError:",
           ("tests/test_cli.py::test_limit_train_batches_1_is_one_batch_per_epoch",),
           "--limit-train-batches 1 is read as the fraction 1.0: every batch"),
    Mutant("no_weight_decay_list_ignored", "finetune/training/optim.py",
           "or any(fnmatch.fnmatch(name, pat) for pat in patterns)", "or False",
           ("tests/training/test_weight_decay.py",), "ViT/Swin position embeddings and class tokens get weight decay"),
    Mutant("unfit_weights_accepted", "finetune/models/weights.py",
           "if len(unfilled) <= MAX_UNFILLED_SHARE * len(body):", "if True:",
           ("tests/models/test_weights.py::test_weights_that_fit_little_fail_naming_the_tensors",),
           "--weights PATH that matches almost nothing silently trains from random init"),
    Mutant("bf16_on_emulating_gpus", "finetune/training/precision.py",
           "is_bf16_supported(including_emulation=False)", "is_bf16_supported()",
           ("tests/training/test_precision_auto.py",), "--precision auto picks bf16 on T4/V100, which only emulate it"),
    Mutant("checkpoint_forgets_build_options", MODULE,
           "\"build_options\": self.backbone.build_options,", "\"build_options\": {},",
           ("tests/models/test_rebuild.py",),
           "GoogLeNet/Inception trained with transform_input reload without it: another function"),
    # ----- run directories -----------------------------------------------------------------------
    Mutant("run_dir_overwritten_silently", "finetune/run/run_dir.py",
           "    if not overwrite:\n", "    if False:\n",
           ("tests/test_cli.py::test_existing_run_dir_is_refused_and_overwrite_starts_fresh",),
           "--output pointing at an earlier run replaces it without a word"),
    Mutant("overwrite_removes_user_files", "finetune/run/run_dir.py",
           "if path.name in RUN_FILES or (", "if True or (",
           ("tests/test_cli.py::test_existing_run_dir_is_refused_and_overwrite_starts_fresh",),
           "--overwrite deletes files a run never writes (the user's own)"),
    # ----- divergence guard ----------------------------------------------------------------------
    Mutant("divergence_nan_slips_through", "finetune/training/callbacks/divergence.py",
           "if not math.isfinite(mean):", "if math.isinf(mean):",
           ("tests/training/test_divergence.py::test_huge_lr_from_the_start_is_reported",),
           "a NaN training loss does not stop the run (NaN compares false with every threshold)"),
    # Caught by the state_dict round trip in test_divergence.py (test_a_resumed_guard_keeps_the_first_epoch_mean).
    Mutant("divergence_guard_forgets_first_epoch_on_resume", "finetune/training/callbacks/divergence.py",
           "self.first_epoch_mean = state_dict[\"first_epoch_mean\"]", "pass",
           ("tests/training/test_divergence.py",),
           "after --resume the guard has no first-epoch mean, so only NaN/Inf can stop the run"),
    Mutant("divergence_factor_300", "finetune/run/fit.py",
           "DIVERGENCE_FACTOR = 3.0", "DIVERGENCE_FACTOR = 300.0",
           ("tests/training/test_divergence.py",), "the divergence guard allows 300x the first epoch's loss"),
    # ----- run record, selection, early stopping, class imbalance ------------------------------------
    Mutant("epoch_row_keeps_stale_val", "finetune/training/callbacks/epoch_record.py",
           "self._val, self._images, self._train_seconds = {}, 0, None", "self._images, self._train_seconds = 0, None",
           ("tests/run/test_run_record.py::test_metrics_csv_has_one_full_row_per_epoch",),
           "metrics.csv repeats the last validation's figures in epochs that were not validated"),
    Mutant("resume_drops_earlier_rows", "finetune/training/callbacks/epoch_record.py",
           "self.rows: list[dict[str, Any]] = [dict(r) for r in previous_rows or []]",
           "self.rows: list[dict[str, Any]] = []",
           ("tests/run/test_run_record.py::test_resumed_run_appends_rows_once_per_epoch",),
           "a resumed run's metrics.csv loses the epochs before the resume"),
    Mutant("monitor_mode_always_max", "finetune/run/fit.py",
           "monitor, mode = selection_metric(config.monitor, config.ema), monitor_spec(config.monitor).mode",
           "monitor, mode = selection_metric(config.monitor, config.ema), \"max\"",
           ("tests/run/test_run_record.py::test_monitor_loss_keeps_the_epoch_of_lowest_val_loss",),
           "--monitor loss keeps the checkpoint with the highest val loss"),
    Mutant("early_stop_no_restart_at_unfreeze", "finetune/training/callbacks/early_stop.py",
           "            self.wait_count = 0\n", "",
           ("tests/run/test_run_record.py::test_early_stop_patience_restarts_when_layers_unfreeze",),
           "an unfrozen phase inherits the frozen phase's patience count and is cut before it trains"),
    Mutant("early_stop_waits_for_unreachable_unfreeze", "finetune/training/callbacks/early_stop.py",
           "any(epoch < start < last for start, _ in schedule.milestones)",
           "any(epoch < start for start, _ in schedule.milestones)",
           ("tests/run/test_run_record.py::test_early_stop_still_works_when_the_schedule_lists_unfreezes_past_the_last_epoch",),
           "early stopping never fires when the unfreeze schedule runs past --epochs"),
    Mutant("class_weights_ignored_in_loss", LOSSES,
           "weighted = target if class_weights is None else target * class_weights.to(target)", "weighted = target",
           ("tests/data/test_balance.py::test_weighted_soft_target_loss_matches_torch_with_smoothing_and_mixing",
            "tests/run/test_run_record.py::test_training_step_weights_each_class_term"),
           "--class-weights is accepted and recorded but the loss is unweighted"),
    Mutant("lr_auto_drops_class_weights", "finetune/run/plan.py",
           "class_weights=self.class_weights, record=self.record())", "record=self.record())",
           ("tests/run/test_run_record.py::test_lr_auto_keeps_the_class_weights_and_the_sampler_reaches_the_loader",),
           "the module trains without the class weights the plan recorded (with --lr auto too)"),
    Mutant("sampler_not_passed", "finetune/run/plan.py",
           "augment=self.augment,\n                                     sampler=c.sampler)", "augment=self.augment)",
           ("tests/run/test_run_record.py::test_lr_auto_keeps_the_class_weights_and_the_sampler_reaches_the_loader",),
           "--sampler balanced is accepted but batches are plainly shuffled"),
    Mutant("balanced_acc_counts_absent_classes", "finetune/training/monitor.py",
           "return torch.nanmean(class_recalls(super().compute()))",
           "return torch.nan_to_num(class_recalls(super().compute())).mean()",
           ("tests/run/test_run_record.py::test_balanced_accuracy_skips_classes_without_images",),
           "balanced accuracy counts a class with no val images as recall 0"),
    Mutant("scan_cache_ignores_mtime", "finetune/data/scan.py",
           "if stat is None or entry is None or tuple(entry[:2]) != stat:", "if stat is None or entry is None:",
           ("tests/data/test_scan.py::test_a_second_scan_reuses_the_verdicts_and_decodes_only_changed_files",),
           "a file that changed since the last scan keeps its old verdict (a now-broken image is trained on)"),
    Mutant("feature_check_keeps_ties_frozen", "finetune/training/feature_fit.py",
           "return self.last_fit <= self.first_fit", "return self.last_fit < self.first_fit",
           ("tests/training/test_feature_fit.py::test_auto_trains_everything_when_the_last_group_fits_no_better_than_the_first",),
           "deep features that fit the data no better than the stem's stay frozen"),
    Mutant("feature_check_counts_the_image_in_its_own_mean", "finetune/training/feature_fit.py",
           "own = F.normalize(sums[labels] - f, dim=1)", "own = F.normalize(sums[labels], dim=1)",
           ("tests/training/test_feature_fit.py::test_nearest_mean_leaves_each_image_out_of_its_own_class_mean",),
           "each image votes for its own class: every feature set looks like it fits, and nothing trains"),
    Mutant("feature_check_child_rank_measures_again", "finetune/run/plan.py",
           "if inherited and config.freeze_until == \"auto\":", "if False:",
           ("tests/run/test_plan.py::test_processes_ddp_starts_take_rank_zeros_freeze_decision",),
           "each DDP rank decides its own frozen part; a tie broken differently hangs the run"),
]
