"""The public Python API: what `import finetune` offers, and a Trainer of the user's own."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl

import finetune


def test_public_names_resolve():
    for name in finetune.__all__:
        assert getattr(finetune, name) is not None, name
    assert ({"RunConfig", "fit", "FinetuneModule", "ImageFolderDataModule", "export", "Predictor", "backbones"}
            <= set(finetune.__all__))


def test_export_stays_the_function_after_its_package_is_imported():
    import inspect

    import finetune.bundling.bundle

    assert inspect.isfunction(finetune.export) and finetune.export is finetune.bundling.bundle.export


def test_fit_returns_paths_and_metrics(tiny_data, tmp_path):
    config = finetune.RunConfig(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, epochs=1,
                                batch_size=8, workers=0, progress=False, output=tmp_path / "run")
    result = finetune.fit(config)
    assert result.run_dir == tmp_path / "run" and result.best_checkpoint.is_file()
    assert 0.0 <= result.best_val_acc1 <= 1.0 and result.best_epoch == 1
    predictor = finetune.Predictor.load(result.run_dir / "model")
    assert predictor.class_names == ["circle", "square", "triangle"]
    # fit() imported the finetune.export subpackage; the public name must still be callable.
    bundle = finetune.export(result.run_dir, tmp_path / "again")
    assert (bundle / "model.onnx").is_file()


def test_module_and_datamodule_work_with_a_users_trainer(tiny_data, tmp_path):
    backbone, _ = finetune.create_backbone("test_resnet", num_classes=3, weights="none")
    dm = finetune.ImageFolderDataModule(tiny_data, backbone.data_config.with_size(32), batch_size=8)
    config = finetune.RunConfig(backbone="test_resnet", data=tiny_data, weights="none", freeze_until="layer3")
    module = finetune.FinetuneModule.from_config(config, dm.classes, backbone=backbone)
    stem_before = backbone.model.conv1[0].weight.detach().clone()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    assert backbone.model.conv1[0].weight.equal(stem_before)  # frozen by the module, not by fit()


@pytest.mark.parametrize("given, nearest", [({"learning_rate": 0.1}, "did you mean 'lr'?"),
                                            ({"epoch": 3}, "did you mean 'epochs'?"),
                                            ({"num_workers": 2}, "did you mean 'workers'?")])
def test_an_unknown_keyword_names_the_nearest_setting(given, nearest):
    from finetune.errors import FinetuneError

    with pytest.raises(FinetuneError, match=f"unknown setting '{next(iter(given))}'; {nearest}"):
        finetune.RunConfig(backbone="resnet18", data=".", **given)
