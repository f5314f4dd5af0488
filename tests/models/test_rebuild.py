"""A trained network is rebuilt as it was trained: checkpoint, export bundle, eager runner, teacher.

torchvision's GoogLeNet and Inception v3 take `transform_input=True` with ImageNet weights (they
were trained on [-1, 1] inputs). The flag is a builder argument, not a tensor: it must travel with
the checkpoint and the bundle, or every reload computes a different function.
"""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from safetensors.torch import save_file

from finetune.bundling.bundle import export_trained
from finetune.config import RunConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.images import load_image
from finetune.data.scan import scan_image_folder
from finetune.data.tta import batch_inputs
from finetune.inference import Predictor
from finetune.models.zoo import torchvision_data_config
from finetune.training.checkpoint import load_trained
from finetune.training.module import FinetuneModule
from finetune.training.teacher import load_teacher

CLASSES = ["circle", "square", "triangle"]


def _local_imagenet_weights(arch: str, folder, images: np.ndarray) -> None:
    """A random-init 1000-class network saved where `--weights imagenet` looks first (tv_<arch>).

    Its BatchNorm statistics are those of `images` (N, 3, S, S), as pretrained ones fit real
    images: eval-mode logits stay small, so float noise stays far below the tolerances.
    """
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, aux_logits=False, init_weights=True,
                                         transform_input=True)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        model.train()(torch.from_numpy(images))
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"tv_{arch}.safetensors"))


def _train_one_step(config: RunConfig, tmp_path) -> tuple[FinetuneModule, object]:
    module = FinetuneModule.from_config(config, CLASSES)
    dm = ImageFolderDataModule(config.data, module.input_config, batch_size=8, workers=0)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, dm)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return module.eval(), ckpt


# Tolerances: the trained weights may sit in another memory format than reloaded ones, and oneDNN
# then sums in another order (~1e-4 here); a wrong transform_input moves logits by ~0.1-1.
def _logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# GoogLeNet only: Inception v3 takes the same `transform_input` path (zoo.AUX_MODULES) and its round
# trip cost 22 s of the suite; tests/models/test_shapes.py builds and runs Inception itself.
@pytest.mark.parametrize(("name", "size"), [("tv:googlenet", 64)])
def test_imagenet_transform_input_survives_reload_export_and_teacher(name, size, tiny_data, tmp_path):
    index = scan_image_folder(tiny_data)
    dc = torchvision_data_config(name[3:]).with_size(size)
    _local_imagenet_weights(name[3:], tmp_path / "weights", batch_inputs([load_image(p) for p, _ in index.train], dc))
    config = RunConfig(backbone=name, data=tiny_data, weights="imagenet", weights_dir=tmp_path / "weights",
                       image_size=size, batch_size=8, workers=0, progress=False, precision="32", lr=1e-3,
                       freeze_until=None)
    trained, ckpt = _train_one_step(config, tmp_path)
    assert trained.backbone.model.transform_input  # the path under test: ImageNet weights switch it on
    x = batch_inputs([load_image(p) for p, _ in index.val[:4]], dc)
    expected = _logits(trained, x)

    reloaded = FinetuneModule.from_checkpoint(ckpt).eval()
    np.testing.assert_allclose(_logits(reloaded, x), expected, rtol=1e-3, atol=1e-3, err_msg="from_checkpoint")
    teacher = load_teacher(ckpt, CLASSES)
    np.testing.assert_allclose(_logits(teacher.backbone, x), expected, rtol=1e-3, atol=1e-3, err_msg="teacher")
    bundle = export_trained(load_trained(ckpt), tmp_path / "bundle")
    for backend in ("eager", "onnx"):
        runner = Predictor.load(bundle, backend=backend).runner
        np.testing.assert_allclose(runner(x), expected, rtol=1e-3, atol=1e-3, err_msg=f"bundle, {backend} backend")
