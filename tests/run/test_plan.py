"""The RunPlan: every derived setting decided once, built through by run and lr-find, kept in the record."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from finetune.config import RunConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.scan import scan_image_folder
from finetune.models.backbone import create_backbone
from finetune.run.plan import resolve_run
from finetune.training.losses import LossSpec
from finetune.training.module import FinetuneModule
from finetune.training.optim import OptimizerSpec
from finetune.training.schedules import ScheduleSpec


def _plan(tiny_data: Path, weights: Path, **kw):
    config = RunConfig(backbone="test_resnet", data=tiny_data, weights=str(weights), image_size=32, workers=0,
                       precision="32", **kw)
    index = scan_image_folder(tiny_data, val_split=config.val_split, seed=config.seed)
    backbone, _ = create_backbone("test_resnet", len(index.classes), str(weights))
    return resolve_run(config, index, backbone, {"lr": "command line"})


def test_resolve_run_decides_every_data_dependent_setting(tiny_data, fitted_resnet_weights):
    plan = _plan(tiny_data, fitted_resnet_weights, class_weights="auto")
    c = plan.config
    # 8 train images per class: the last backbone group and the head train (the auto rule's first step).
    assert c.freeze_until == plan.backbone.groups[-2].unit_names[0]
    assert (c.batch_size, c.epochs) == (8, 60) and isinstance(c.val_every, int) and c.epochs % c.val_every == 0
    assert not isinstance(plan.augment, str)  # --augment auto: a policy measured on the data
    for key in ("freeze_until", "batch_size", "epochs", "val_every", "augment"):
        assert plan.sources[key].startswith("auto:"), key
    assert plan.sources["lr"] == "command line"
    # The console says them in the order they were decided: the batch before the epochs it sets.
    assert plan.decided == ("freeze_until", "batch_size", "epochs", "val_every", "augment")
    assert plan.precision == "32" and plan.channels_last is False and plan.workers == 0
    assert plan.class_weights is not None and plan.class_weights.shape == (3,)
    assert len(plan.lr_mults) == len(plan.backbone.groups) and plan.lr_mults[-1] == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.precision = "bf16-mixed"


def test_lr_find_builds_what_run_would_train(tiny_data, fitted_resnet_weights, monkeypatch, tmp_path):
    """lr-find tests the module `run` trains: its frozen part, class weights, batch and sampler."""
    import finetune.run.lr_find as lr_find_module

    seen = {}

    def capture(module, datamodule, **kw):
        seen.update(module=module, datamodule=datamodule)
        return lr_find_module.LRFindResult([1e-3], [1.0], 1e-3)

    monkeypatch.setattr(lr_find_module, "find_lr", capture)
    config = RunConfig(backbone="test_resnet", data=tiny_data, weights=str(fitted_resnet_weights), image_size=32,
                       workers=0, precision="32", lr="auto", class_weights="auto", output=tmp_path, progress=False)
    lr_find_module.run_lr_find(config)
    plan = _plan(tiny_data, fitted_resnet_weights, class_weights="auto")
    module, dm = seen["module"], seen["datamodule"]
    assert module.frozen_units == plan.backbone.resolve_layer(plan.config.freeze_until) > 0
    assert torch.equal(module.class_weights, plan.class_weights.float())
    assert dm.batch_size == plan.config.batch_size


def test_a_module_built_from_parts_round_trips_through_its_checkpoint(tiny_data, tmp_path):
    """No RunConfig anywhere: the parts are what the checkpoint keeps and what rebuilds the module."""
    pl.seed_everything(0)
    backbone, _ = create_backbone("test_resnet", 3, "none")
    optimizer = OptimizerSpec("sgd", 0.05, tuple(0.5 for _ in backbone.groups[:-1]) + (1.0,), weight_decay=1e-4)
    module = FinetuneModule(backbone, ["circle", "square", "triangle"], optimizer=optimizer,
                            schedule=ScheduleSpec("step", step_size=1, gamma=0.5), loss=LossSpec(label_smoothing=0.1),
                            image_size=32)
    dm = ImageFolderDataModule(tiny_data, backbone.data_config.with_size(32), batch_size=8, seed=0)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.05  # the step schedule's spec reached the optimizer
    trainer.save_checkpoint(tmp_path / "parts.ckpt")
    hparams = torch.load(tmp_path / "parts.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["config"] is None and hparams["parts"]["loss"]["label_smoothing"] == 0.1
    rebuilt = FinetuneModule.from_checkpoint(tmp_path / "parts.ckpt")
    assert rebuilt.optimizer_spec == optimizer and rebuilt.schedule_spec == module.schedule_spec
    x = torch.randn(2, 3, 32, 32)
    module.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), module(x), rtol=0, atol=1e-6)  # same weights, same function
    # Prediction and export read the run settings they need from RunConfig's defaults (no config saved).
    from finetune.inference import Predictor, predict_files
    from finetune.training.checkpoint import load_trained

    trained = load_trained(tmp_path / "parts.ckpt")
    assert trained.config is None and trained.data_config.input_size == 32
    assert (trained.setting("seed"), trained.setting("tta"), trained.setting("data")) == (42, "none", None)
    image = next((tiny_data / "val" / "circle").iterdir())
    [prediction] = predict_files(Predictor.from_path(tmp_path / "parts.ckpt"), [image], top_k=1)
    assert prediction.error is None and prediction.classes[0] in ("circle", "square", "triangle")


def test_config_yaml_and_the_checkpoint_record_the_same_plan(trained_run):
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    hparams, plan = ckpt["hyper_parameters"], ckpt["finetune"]["plan"]
    assert "plan" not in hparams  # not sent to the trackers with the hyperparameters
    resolved = plan["resolved"]
    assert saved["resolved"]["lr_mults"] == resolved["lr_mults"] and len(resolved["lr_mults"]) > 1
    assert saved["resolved"]["freeze_until"] == resolved["freeze_until"] == hparams["config"]["freeze_until"]
    assert plan["sources"]["epochs"] == saved["sources"]["epochs"] == "command line"
    assert hparams["config"]["batch_size"] == saved["batch_size"] == 8


def test_lr_auto_loads_the_teacher_once(make_config, trained_run, monkeypatch):
    """The range test's teacher is the run's: a second load would draw random numbers after the reseed."""
    import finetune.training.module as module_file
    from finetune.run.fit import fit

    calls = []
    original = module_file.load_teacher
    monkeypatch.setattr(module_file, "load_teacher", lambda *a, **kw: calls.append(a) or original(*a, **kw))
    fit(make_config(epochs=1, lr="auto", lr_find_steps=5, teacher=str(trained_run), export=False))
    assert len(calls) == 1


def test_processes_ddp_starts_take_rank_zeros_freeze_decision(tiny_data, fitted_resnet_weights, monkeypatch):
    """A child rank never checks the features itself: a tie broken the other way on another CPU would
    give it another frozen part than rank 0's."""
    import finetune.run.plan as plan_module

    parent = _plan(tiny_data, fitted_resnet_weights)
    env = plan_module.shared_env(parent)
    assert parent.config.freeze_until == "layer4" and set(env) == {plan_module.AUTO_FREEZE_ENV}

    monkeypatch.setenv(plan_module.AUTO_FREEZE_ENV, env[plan_module.AUTO_FREEZE_ENV].replace('"layer4"', '"layer3"'))
    monkeypatch.setattr(plan_module, "measure_feature_fit", lambda *a, **k: pytest.fail("a child rank measured"))
    child = _plan(tiny_data, fitted_resnet_weights)
    assert child.config.freeze_until == "layer3" and child.sources["freeze_until"] == parent.sources["freeze_until"]
    given = _plan(tiny_data, fitted_resnet_weights, freeze_until="layer2")  # a given layer is never replaced
    assert given.config.freeze_until == "layer2" and plan_module.shared_env(given) == {}


def test_lr_find_and_the_tune_estimate_use_the_size_run_chooses(tiny_data, monkeypatch, tmp_path):
    """No --image-size: the range test and the study's time estimate run at the size `run` would train at
    (here another rule's 64 px, to tell it from test_resnet's own 160)."""
    import finetune.run.lr_find as lr_find_module
    import finetune.search.budget as budget

    seen = {}

    def capture(module, datamodule, **kw):
        seen.update(module=module, datamodule=datamodule)
        return lr_find_module.LRFindResult([1e-3], [1.0], 1e-3)

    import finetune.run.plan as plan_module

    def rule(size, index, backbone, started=None):
        return (size, None) if size else (64, "auto: 64 px, another rule")

    monkeypatch.setattr(lr_find_module, "find_lr", capture)
    monkeypatch.setattr(plan_module, "resolve_image_size", rule)
    monkeypatch.setattr(budget, "resolve_image_size", rule)
    config = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", workers=0, precision="32",
                       output=tmp_path, progress=False, accelerator="cpu")
    lr_find_module.run_lr_find(config)
    assert seen["module"].input_config.input_size == seen["datamodule"].data_config.input_size == 64

    sides = []

    def built(*args, **kw):
        net, report = create_backbone(*args, **kw)
        net.register_forward_pre_hook(lambda module, inputs: sides.append(inputs[0].shape[-1]))
        return net, report

    monkeypatch.setattr(budget, "create_backbone", built)
    budget.time_one_batch(config, scan_image_folder(tiny_data), 4)
    assert sides and set(sides) == {64}
