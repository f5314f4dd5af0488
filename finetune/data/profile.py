"""What a training set is like, measured once before training: the facts the automatic defaults follow.

The measurements read a stratified sample of the training images (at most SAMPLE_PER_CLASS per
class), so they take about a second whatever the dataset's size.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from finetune.data.images import BadImageError, load_pil
from finetune.data.scan import DatasetIndex, paths_by_label

SAMPLE_PER_CLASS = 40
SAMPLE_MAX = 2000  # with many classes fewer per class: the flip test's two similarity matrices are SAMPLE_MAX^2
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
        flip_nn_flipped: The same for their mirror images, against the unflipped ones (lower than
            flip_nn on any set of near-duplicates, such as crops of a few photos: see flip_test).
        flip_changes_label: Whether mirror images take the place of other classes (see flip_test:
            'b' and 'd', left and right arrows).
        tonal_spread: How much the images differ in exposure (see `tonal_spread`; nan for a sample too
            small to tell).
        exposure_varies: Whether tonal_spread reaches EXPOSURE_SPREAD: if not, every image has the same
            black and white points, and brightness/contrast jitter would only make images no test image
            is like.
        flip_nn_with_mirrors: flip_nn with the other images' mirror images among the references, each
            under its own image's label (nan in a profile recorded before this figure).
        flip_margin: How far flip_nn_with_mirrors may fall below flip_nn before mirroring counts as
            changing the class: two standard errors of the paired fall (nan as above).
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
    flip_nn_with_mirrors: float = math.nan
    flip_margin: float = math.nan

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
    flip = flip_test(images, labels)
    return DataProfile(
        train_images=len(index.train),
        per_class=float(statistics.median(counts.values())),
        classes=len(index.classes),
        grey=bool(images) and all(_is_grey(im) for im in images),
        flip_nn=flip.nn,
        flip_nn_flipped=flip.nn_flipped,
        flip_changes_label=flip_changes_label(flip, len(index.classes)),
        tonal_spread=(spread := tonal_spread(images)),
        exposure_varies=math.isnan(spread) or spread >= EXPOSURE_SPREAD,
        flip_nn_with_mirrors=flip.nn_with_mirrors,
        flip_margin=flip.margin,
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


class FlipEvidence(NamedTuple):
    """What the flip test measured on `images` thumbnails (see flip_test); nan where it could not."""

    nn: float  # leave-one-out nearest-neighbour top-1 of the originals
    nn_flipped: float  # top-1 of the mirror images against the originals
    nn_with_mirrors: float  # top-1 of the originals with the labelled mirror images among the references
    margin: float  # two standard errors of the paired fall nn - nn_with_mirrors
    images: int


def flip_test(images: list[np.ndarray], labels: np.ndarray) -> FlipEvidence:
    """Whether mirror images take the place of other classes, on nearest neighbours of thumbnails.

    Flip augmentation adds each training image's mirror image under the image's own label. Where
    mirroring turns one class into another ('b' and 'd', left and right arrows), those mirror images
    lie among the other class's images with the wrong label. The test adds them to the references
    of a leave-one-out nearest-neighbour classifier: top-1 among the other originals (`nn`) against
    top-1 among the other originals and their mirror images (`nn_with_mirrors`). Mirror images of
    another class that become nearest neighbours lower it; where mirroring keeps the class, the
    mirror images that win are of the image's own class and it holds or rises. An image's own
    mirror image is left out too. A mirror image at least as near as the nearest original takes
    its place: a tie is an image shown with two labels.

    Both figures classify the same originals, whose nearest neighbour may be a near-duplicate
    (an overlapping crop of the same photo). Comparing the mirror images' own top-1 against the
    originals' (`nn_flipped` against `nn`) does not: a mirror image has no near-duplicate to find,
    so that top-1 falls on any set of crops of a few photos, whether or not mirroring changes the
    class (benchmarks/results/flip-rule.md). Mirroring keeps dot products (x.Fy = Fx.y), so the
    same test reads: is a mirror image nearer the mirror images of its own class or another class?

    Returns:
        The figures over the classes with 2+ images; nan when fewer than 2 classes have 2 images.
    """
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    keep = [i for i, label in enumerate(labels) if counts[label] >= 2]  # a lone image has no neighbour of its class
    if len(set(labels[keep].tolist())) < 2:
        return FlipEvidence(math.nan, math.nan, math.nan, math.nan, 0)
    images, labels = [images[i] for i in keep], labels[keep]
    x = _unit_rows(images)
    xf = _unit_rows([im[:, ::-1] for im in images])
    direct, cross = x @ x.T, xf @ x.T  # cross[i, j] = Fx_i.x_j = x_i.Fx_j: symmetric
    np.fill_diagonal(direct, -np.inf)  # an image is never its own neighbour, nor its own mirror's
    np.fill_diagonal(cross, -np.inf)
    rows = np.arange(len(labels))
    nearest, nearest_mirror = direct.argmax(axis=1), cross.argmax(axis=1)
    plain = labels[nearest] == labels
    mirror_wins = cross[rows, nearest_mirror] >= direct[rows, nearest]
    with_mirrors = np.where(mirror_wins, labels[nearest_mirror], labels[nearest]) == labels
    flipped = (labels[nearest_mirror] == labels).mean()
    return FlipEvidence(float(plain.mean()), float(flipped), float(with_mirrors.mean()),
                        _paired_margin(plain, with_mirrors), len(labels))


def _paired_margin(before: np.ndarray, after: np.ndarray) -> float:
    """Two standard errors of the mean of the per-image differences `before - after` (0/1 outcomes).

    The variance is floored at 1/n: a sample whose images all agree still cannot rule out one
    image in n going the other way.
    """
    d = before.astype(np.float64) - after
    n = len(d)
    return 2 * math.sqrt(max(float(d.var()), 1.0 / n) / n)


def flip_changes_label(evidence: FlipEvidence, classes: int) -> bool:
    """Whether the labelled mirror images took the nearest neighbour from more originals than noise explains.

    The fall from `nn` to `nn_with_mirrors` must exceed the paired margin, and the originals must be
    recognisable above chance at all (otherwise the thumbnails say nothing about orientation and
    mirroring stays on, as for natural photos).
    """
    n = evidence.images
    if math.isnan(evidence.nn) or n == 0:
        return False
    chance = 1.0 / max(classes, 1)
    recognisable = evidence.nn > chance + 2 * math.sqrt(chance * (1 - chance) / n)
    return recognisable and evidence.nn - evidence.nn_with_mirrors > evidence.margin
