"""Properties of the TTA combination: the Predictor averages each view's probabilities (not its logits),
so the result is a distribution and does not depend on the order of an image's views."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import softmax as scipy_softmax

from finetune.data.data_config import DataConfig
from finetune.data.tta import TTA_MODES, view_count
from finetune.inference import Predictor

SETTINGS = settings(max_examples=80, deadline=None)
DC = DataConfig(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)


def _predictor(classes: int, tta: str, temperature: float = 1.0) -> Predictor:
    return Predictor(lambda x: None, [f"c{i}" for i in range(classes)], DC, tta=tta, temperature=temperature)


@st.composite
def view_logits(draw):
    """(mode, logits of shape (N * V, C) with each image's V views consecutive, temperature)."""
    mode = draw(st.sampled_from([m for m in TTA_MODES if view_count(m) > 1]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    logits = draw(hnp.arrays(np.float64, (n * view_count(mode), c), elements=st.floats(-30, 30)))
    return mode, logits, draw(st.floats(0.2, 5.0))


@SETTINGS
@given(view_logits())
def test_the_combined_prediction_is_the_mean_of_the_views_probabilities(case):
    mode, logits, temperature = case
    got = _predictor(logits.shape[1], mode, temperature).probabilities_of(logits)
    views = view_count(mode)
    expected = scipy_softmax(logits / temperature, axis=1).reshape(-1, views, logits.shape[1]).mean(axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-9)


@SETTINGS
@given(view_logits(), st.randoms(use_true_random=False))
def test_the_order_of_an_images_views_does_not_matter(case, rnd):
    mode, logits, temperature = case
    views, c = view_count(mode), logits.shape[1]
    per_image = logits.reshape(-1, views, c)
    shuffled = np.stack([image[rnd.sample(range(views), views)] for image in per_image]).reshape(-1, c)
    predictor = _predictor(c, mode, temperature)
    np.testing.assert_allclose(predictor.probabilities_of(shuffled), predictor.probabilities_of(logits),
                               rtol=1e-12, atol=1e-15)


def test_a_confident_view_and_an_unsure_one_average_to_three_quarters():
    """Worked by hand: views with probabilities (1, 0) (logits 40, 0) and (1/2, 1/2) average to (3/4, 1/4);
    averaging the logits instead would give softmax(20, 0), about (1, 0)."""
    got = _predictor(2, "flip").probabilities_of(np.array([[40.0, 0.0], [0.0, 0.0]]))
    assert got == pytest.approx(np.array([[0.75, 0.25]]), abs=1e-12)


def test_the_predictor_averages_the_probabilities_of_every_view_it_runs():
    """End to end through `probabilities`: a runner whose logits differ between the plain and the mirrored
    view of an image (left half bright: class 0 at logit 20; mirrored, the right half: 0 everywhere)."""
    def runner(x: np.ndarray) -> np.ndarray:
        left = x[:, :, :, : x.shape[3] // 2].mean(axis=(1, 2, 3)) > 0
        return np.stack([np.where(left, 20.0, 0.0), np.zeros(len(x))], axis=1)

    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255
    predictor = Predictor(runner, ["bright-left", "other"], DC, tta="flip")
    expected = (scipy_softmax([20.0, 0.0]) + scipy_softmax([0.0, 0.0])) / 2
    np.testing.assert_allclose(predictor.probabilities([image]), [expected], rtol=1e-12)
