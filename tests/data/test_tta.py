"""TTA views, their averaging, and preprocessing equal to the training eval transform."""
from __future__ import annotations

import numpy as np
import pytest

from finetune.data.data_config import DataConfig
from finetune.data.tta import TTA_MODES, average_views, batch_inputs, tta_views, view_count
from finetune.inference import Predictor

DC = DataConfig(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear", crop_pct=0.8)


def _image(h: int = 10, w: int = 14) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode,count", [("none", 1), ("flip", 2), ("five-crop", 5), ("ten-crop", 10), ("scales", 3)])
def test_view_count(mode, count):
    views = tta_views(_image(), DC, mode)
    assert len(views) == view_count(mode) == count
    assert all(v.shape == (8, 8, 3) for v in views)


def test_crops_are_corners_center_and_mirrors():
    img = _image()  # resize_size = round(8 / 0.8) = 10: the 10x14 image is not resized
    views = tta_views(img, DC, "ten-crop")
    np.testing.assert_array_equal(views[0], img[:8, :8])
    np.testing.assert_array_equal(views[1], img[:8, 6:])
    np.testing.assert_array_equal(views[2], img[2:, :8])
    np.testing.assert_array_equal(views[3], img[2:, 6:])
    np.testing.assert_array_equal(views[4], img[1:9, 3:11])
    for plain, mirrored in zip(views[:5], views[5:]):
        np.testing.assert_array_equal(mirrored, plain[:, ::-1])
    flip = tta_views(img, DC, "flip")
    np.testing.assert_array_equal(flip[0], views[4])
    np.testing.assert_array_equal(flip[1], views[4][:, ::-1])


def test_average_views_on_known_input():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(average_views(probs, 2), [[0.5, 0.5], [0.4, 0.6]])


class _Recorder:
    """A runner whose logit for class 0 is the mean of the left half minus the right half."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        w = x.shape[-1] // 2
        d = x[..., :w].mean(axis=(1, 2, 3)) - x[..., w:].mean(axis=(1, 2, 3))
        return np.stack([d, -d], axis=1) * 10


@pytest.mark.parametrize("mode", TTA_MODES)
def test_views_go_through_one_forward_pass(mode):
    runner = _Recorder()
    predictor = Predictor(runner, ["left", "right"], DC, batch_size=32)
    probs = predictor.probabilities([_image(), _image(12, 10), _image(9, 9)], tta=mode)
    assert runner.batches == [3 * view_count(mode)]
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_flip_averaging_cancels_a_left_right_feature():
    predictor = Predictor(_Recorder(), ["left", "right"], DC)
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255  # bright left half: "left" without TTA
    plain = predictor.probabilities([img], tta="none")[0]
    flipped = predictor.probabilities([img], tta="flip")[0]
    assert plain[0] > 0.99
    e = np.exp(20.0)  # logits +-10 -> softmax of the view and of its mirror, averaged by hand
    np.testing.assert_allclose(flipped, [0.5 * (e / (e + 1) + 1 / (e + 1))] * 2, rtol=1e-6)


def test_preprocessing_equals_training_eval_transform(tiny_data):
    from finetune.data.images import load_image
    from finetune.data.transforms import build_eval_transform

    dc = DataConfig(input_size=24, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic",
                    crop_pct=0.875)
    images = [load_image(p) for p in sorted(tiny_data.rglob("*.png"))[:4]] + [_image(37, 53), _image(61, 29)]
    expected = np.stack([build_eval_transform(dc)(img).numpy() for img in images])
    got = batch_inputs(images, dc)
    assert got.shape == expected.shape == (6, 3, 24, 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


class _FixedLogits:
    """A runner that ignores its input and returns preset logits, one row per view."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert len(x) == len(self.logits)
        return self.logits


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tta_averages_probabilities_not_logits():
    # Two images x two flip views with asymmetric logits: the mean of the softmaxes and the softmax of
    # the mean logits differ by more than 0.1 here (checked below), so averaging logits is visible.
    logits = np.array([[6.0, 0.0, 0.0], [0.0, 2.0, 1.0],
                       [1.0, 3.0, -2.0], [0.5, 0.5, 4.0]], np.float32)
    predictor = Predictor(_FixedLogits(logits), ["a", "b", "c"], DC)
    got = predictor.probabilities([_image(), _image(12, 10)], tta="flip")
    p = _softmax_rows(logits.astype(np.float64))
    expected = np.stack([(p[0] + p[1]) / 2, (p[2] + p[3]) / 2])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    wrong = _softmax_rows(np.stack([(logits[0] + logits[1]) / 2, (logits[2] + logits[3]) / 2]).astype(np.float64))
    assert np.abs(expected - wrong).max() > 0.1  # the two averages really differ on this input


def test_tta_temperature_divides_each_views_logits():
    logits = np.array([[4.0, 0.0], [0.0, 1.0]], np.float32)
    predictor = Predictor(_FixedLogits(logits), ["a", "b"], DC, temperature=2.0)
    got = predictor.probabilities([_image()], tta="flip")[0]
    np.testing.assert_allclose(got, _softmax_rows(logits.astype(np.float64) / 2.0).mean(axis=0), rtol=1e-6)
