"""What a training set is like, measured once before training: the facts the automatic defaults follow.

The measurements read a stratified sample of the training images (at most SAMPLE_PER_CLASS per
class), so they take about a second whatever the dataset's size.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from finetune.data.images import BadImageError, load_pil
from finetune.data.scan import DatasetIndex, paths_by_label

SAMPLE_PER_CLASS = 40
SAMPLE_MAX = 2000  # with many classes fewer per class: the flip test's similarity matrix is SAMPLE_MAX^2
THUMB = 16  # side of the thumbnails compared by the flip test: layout survives, texture detail does not
GREY_TOLERANCE = 3  # max |R-G|, |G-B| (0-255) of a pixel that still counts as grey (JPEG chroma noise)
# Photos vary in exposure: the spread of their black points, white points and tonal ranges (see
# tonal_spread) reads 0.3 and more on every real photo set measured (textures, faces; 3 to 200
# images per class). Silhouettes, scans and renders that all span black to white read 0. Below a
# tenth there is no exposure variation for brightness/contrast jitter to imitate.
EXPOSURE_SPREAD = 0.1
TONE_MIN_IMAGES = 8  # fewer sampled images say nothing about a set's exposures: jitter stays on


@dataclass(frozen=True)
class DataProfile:
    """Measured properties of the training split.

    Attributes:
        train_images: Train images in total.
        per_class: Median train images per class.
        classes: Number of classes.
        grey: Whether (nearly) every sampled image is grey: colour augmentation would only add colours
            that no test image has.
        flip_nn: Leave-one-out nearest-neighbour top-1 of the sampled thumbnails.
        flip_nn_flipped: The same for their mirror images, against the unflipped ones.
        flip_changes_label: Whether mirroring moves images measurably towards other classes
            (text, digits, arrows: classes told apart by their orientation).
        tonal_spread: How much the images differ in exposure (see `tonal_spread`; nan for a sample too
            small to tell).
        exposure_varies: Whether tonal_spread reaches EXPOSURE_SPREAD: if not, every image has the same
            black and white points, and brightness/contrast jitter would only make images no test image
            is like.
    """

    train_images: int
    per_class: float
    classes: int
    grey: bool
    flip_nn: float
    flip_nn_flipped: float
    flip_changes_label: bool
    tonal_spread: float = math.nan
    exposure_varies: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataProfile":
        """The inverse of to_dict; fields a config.yaml of an older version lacks take their defaults."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


PROFILE_SEED = 0  # the sample is drawn the same way for every run: a property of the data, not of --seed


def profile_training_set(index: DatasetIndex, seed: int = PROFILE_SEED) -> DataProfile:
    """Measures the train split of `index` (see DataProfile).

    `finetune run` and `augment-preview` both measure with PROFILE_SEED, whatever their own seeds,
    so the preview shows the policy the run will choose, and runs that differ only in --seed
    train with the same augmentation.
    """
    counts = index.counts("train")
    images, labels = _sample(index, seed)
    nn_acc, nn_flipped = flip_test(images, labels)
    return DataProfile(
        train_images=len(index.train),
        per_class=float(statistics.median(counts.values())),
        classes=len(index.classes),
        grey=bool(images) and all(_is_grey(im) for im in images),
        flip_nn=nn_acc,
        flip_nn_flipped=nn_flipped,
        flip_changes_label=flip_changes_label(nn_acc, nn_flipped, len(images), len(index.classes)),
        tonal_spread=(spread := tonal_spread(images)),
        exposure_varies=math.isnan(spread) or spread >= EXPOSURE_SPREAD,
    )


def _sample_paths(index: DatasetIndex, seed: int) -> list[tuple[Path, int]]:
    """The stratified sample: at most SAMPLE_PER_CLASS train images of each class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    per_class = max(2, min(SAMPLE_PER_CLASS, SAMPLE_MAX // max(1, len(index.classes))))
    return [(paths[i], label) for label, paths in sorted(paths_by_label(index.train).items())
            for i in rng.permutation(len(paths))[:per_class]]


def _sample(index: DatasetIndex, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for path, label in _sample_paths(index, seed):
        try:
            im = load_pil(path)
        except BadImageError:  # the scan already reported it
            continue
        images.append(np.asarray(im.resize((THUMB, THUMB), Image.Resampling.BOX)))
        labels.append(label)
    return images, np.asarray(labels)


def image_sides(index: DatasetIndex, seed: int = PROFILE_SEED) -> list[int]:
    """The shorter side, in pixels, of each image of the profile's stratified sample, read from the file
    headers (no pixels are decoded: a few milliseconds for a thousand images). Unreadable files are
    left out, as the scan reported them; EXIF rotation swaps the sides but keeps the shorter one."""
    sides = []
    for path, _ in _sample_paths(index, seed):
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - Pillow raises assorted types on a bad header (see images.py)
            continue
    return sides


def _is_grey(img: np.ndarray) -> bool:
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    rgb = img[..., :3].astype(np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= GREY_TOLERANCE
                and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= GREY_TOLERANCE)


def tonal_spread(images: list[np.ndarray]) -> float:
    """How much the images differ in exposure: the largest interquartile range, over the images, of
    their black point, white point and tonal range, divided by the median tonal range.

    An image's black and white points are the 1st and 99th percentiles of its luminance (ignoring a
    few extreme pixels); its tonal range is their difference. Darker or brighter exposures move the
    points, flatter or harsher ones the range. Quartiles, so that a handful of odd images (a tiny
    silhouette, one overexposed photo) do not decide. nan for fewer than TONE_MIN_IMAGES images: too
    few to tell.
    """
    if len(images) < TONE_MIN_IMAGES:
        return math.nan
    points = np.array([np.percentile(_luminance(img), (1, 99)) for img in images])
    low, high = points[:, 0], points[:, 1]
    iqr = [float(np.subtract(*np.percentile(v, (75, 25)))) for v in (low, high, high - low)]
    return max(iqr) / max(float(np.median(high - low)), 1.0)


def _luminance(img: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601 weights) of an RGB(A) image; a grey image's own values."""
    img = img.astype(np.float32)
    if img.ndim == 3 and img.shape[2] >= 3:
        return img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return img[..., 0] if img.ndim == 3 else img


def _unit_rows(images: list[np.ndarray]) -> np.ndarray:
    """(N, D) thumbnails, each centred and scaled to unit length: brightness and contrast drop out."""
    x = np.stack([im.astype(np.float32).ravel() for im in images])
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def flip_test(images: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    """Nearest-neighbour top-1 of each thumbnail (leave-one-out) and of its mirror image.

    A mirror image is matched against the unflipped images other than its own original. Where
    a class and its mirror image are the same class (objects, scenes, textures, faces), both figures
    agree; where mirroring turns one class into another ('b' and 'd', left and right arrows),
    the mirror images find the wrong class.

    Returns:
        (top-1 of the originals, top-1 of the mirror images) over the classes with 2+ images;
        (nan, nan) when fewer than 2 classes have 2 images.
    """
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    keep = [i for i, label in enumerate(labels) if counts[label] >= 2]  # a lone image has no neighbour of its class
    if len(set(labels[keep].tolist())) < 2:
        return math.nan, math.nan
    images, labels = [images[i] for i in keep], labels[keep]
    x = _unit_rows(images)
    xf = _unit_rows([im[:, ::-1] for im in images])
    return _loo_nn_accuracy(x, x, labels), _loo_nn_accuracy(xf, x, labels)


def _loo_nn_accuracy(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray) -> float:
    sim = queries @ refs.T
    np.fill_diagonal(sim, -np.inf)  # an image is never its own neighbour, nor its own mirror's
    return float((labels[sim.argmax(axis=1)] == labels).mean())


def flip_changes_label(nn_acc: float, nn_flipped: float, n: int, classes: int) -> bool:
    """Whether the mirror images' top-1 fell by more than sampling noise.

    The drop must exceed two standard errors of a proportion over the `n` sampled images, and
    the originals must be recognisable above chance at all (otherwise the thumbnails say nothing
    about orientation and mirroring stays on, as for natural photos).
    """
    if math.isnan(nn_acc) or n == 0:
        return False
    chance = 1.0 / max(classes, 1)
    se = math.sqrt(max(nn_acc * (1 - nn_acc), 1.0 / n) / n)
    recognisable = nn_acc > chance + 2 * math.sqrt(chance * (1 - chance) / n)
    return recognisable and nn_acc - nn_flipped > 2 * se
