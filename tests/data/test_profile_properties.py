"""Properties of the data profile's greyscale test: "whether (nearly) every sampled image is grey", so that
colour jitter is dropped only when no training image has colour."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from finetune.data.profile import SAMPLE_PER_CLASS, profile_training_set
from finetune.data.scan import DatasetIndex

SETTINGS = settings(max_examples=50, deadline=None)

# Each image: "L" (a one-channel file), "grey" (RGB with R = G = B) or "colour" (a cast of 40+ levels).
kinds = st.lists(st.sampled_from(["L", "grey", "colour"]), min_size=2, max_size=2 * SAMPLE_PER_CLASS)


def _write(path: Path, kind: str, rng: np.random.Generator) -> None:
    level = rng.integers(0, 216, (12, 12), dtype=np.uint8)
    if kind == "L":
        Image.fromarray(level, "L").save(path)
        return
    rgb = np.repeat(level[..., None], 3, axis=2)
    if kind == "colour":
        rgb[..., int(rng.integers(3))] += np.uint8(40)  # one channel lifted over the whole image
    Image.fromarray(rgb, "RGB").save(path)


@SETTINGS
@given(kinds, st.integers(0, 2**32 - 1))
def test_the_set_is_grey_only_when_every_image_is(images, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        train = []
        for i, kind in enumerate(images):  # two classes, every image sampled (at most SAMPLE_PER_CLASS each)
            path = Path(tmp) / f"{i}.png"
            _write(path, kind, rng)
            train.append((path, i % 2))
        index = DatasetIndex(Path(tmp), "flat", ["a", "b"], train, [])
        assert profile_training_set(index).grey == all(kind != "colour" for kind in images)
