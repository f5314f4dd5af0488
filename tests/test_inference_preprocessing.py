"""The Predictor preprocesses with the bundle's own mean/std, not ImageNet's.

test_resnet's weights expect mean = std = 0.5, so a hard-coded ImageNet normalisation shows up
in the network input and in the logits. The references here are computed by hand (numpy slicing
and arithmetic), not through the toolkit's batching code.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.bundling.bundle import export_bundle
from finetune.data.data_config import DataConfig
from finetune.inference import Predictor
from finetune.models.backbone import create_backbone

SIZE = 32  # resize_size = round(32 / 0.95) = 34


def _images() -> list[np.ndarray]:
    # Shorter side already 34: the eval resize is a no-op and the crop is plain slicing.
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(34, 34, 3), (34, 40, 3), (44, 34, 3)]]


def _by_hand(img: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Center 32x32 crop, (x / 255 - mean) / std, channels first."""
    top, left = (img.shape[0] - SIZE) // 2, (img.shape[1] - SIZE) // 2
    crop = img[top:top + SIZE, left:left + SIZE].astype(np.float64) / 255.0
    return ((crop - mean) / std).transpose(2, 0, 1)


class _Capture:
    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x)
        return np.zeros((len(x), 2), np.float32)


def test_predictor_normalises_with_its_own_mean_and_std():
    dc = DataConfig(input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.95)
    capture = _Capture()
    Predictor(capture, ["a", "b"], dc).probabilities(_images())
    expected = np.stack([_by_hand(img, 0.5, 0.5) for img in _images()])
    np.testing.assert_allclose(capture.inputs[0], expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def test_resnet_bundle(tmp_path_factory):
    torch.manual_seed(0)
    backbone, _ = create_backbone("test_resnet", 3, "none")
    backbone.train()  # as a module is right after fitting: the export must use eval mode anyway
    dc = backbone.data_config.with_size(SIZE)
    out = export_bundle(backbone, ["a", "b", "c"], dc, tmp_path_factory.mktemp("bundle") / "model", _images())
    assert backbone.training  # the caller's module is left as it was
    return backbone.eval(), out


def test_bundle_predictor_matches_the_network_on_hand_preprocessed_input(test_resnet_bundle):
    backbone, bundle = test_resnet_bundle
    saved = json.loads((bundle / "config.json").read_text())["data_config"]
    assert saved["mean"] == [0.5] * 3 and saved["std"] == [0.5] * 3  # not ImageNet's
    x = torch.from_numpy(np.stack([_by_hand(img, 0.5, 0.5) for img in _images()]).astype(np.float32))
    with torch.no_grad():
        expected = backbone(x).numpy()
    for backend in ("onnx", "eager"):
        got = Predictor.load(bundle, backend=backend).logits(_images())
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=backend)
