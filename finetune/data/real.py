"""Real image tasks written as image folders, from photos that registry packages ship.

No network is needed: scikit-image bundles its sample photos (textures and `lfw_subset`), and the
`animal-mnist` wheel carries its silhouettes. Each task is written in the split layout
(DIR/{train,val,test}/<class>/*.png) with train, val and test drawn from disjoint sources: for the
textures, disjoint bands of each photo; for the others, disjoint images.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.errors import DataError

# Texture classes: scikit-image photos whose every region shows the same surface. All are made grey,
# so that a class cannot be told by its colour alone.
TEXTURE_PHOTOS = ("brick", "grass", "gravel", "moon", "immunohistochemistry")
# Bands of each photo's rows (fractions of its height): train, val and test patches never overlap.
TEXTURE_BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
TEXTURE_PATCH = (48, 96)  # side of a cut patch in source pixels, drawn uniformly
TEXTURE_SIZE = 64  # saved patch side: the photos' scale, reduced


@dataclass(frozen=True)
class RealTask:
    """A real-image task: its name, what it is, the package it needs and its largest per-class split sizes."""

    name: str
    description: str
    package: str
    max_train: int  # most train images per class the source allows next to the val and test sizes below
    val: int
    test: int


TASKS = {
    "textures": RealTask("textures", "5 photographic textures (scikit-image photos), grey patches", "scikit-image",
                         400, 40, 60),
    "silhouettes": RealTask("silhouettes", "10 animal silhouettes, 28 px (animal-mnist)", "animal-mnist", 600, 50, 150),
    "faces": RealTask("faces", "faces vs non-faces, 25 px grey (scikit-image lfw_subset)", "scikit-image", 50, 20, 30),
}


def available(name: str) -> bool:
    """Whether the package a task's images come from is installed."""
    module = {"scikit-image": "skimage", "animal-mnist": "animal_mnist"}[TASKS[name].package]
    return importlib.util.find_spec(module) is not None


def make_real_task(name: str, root: str | Path, train_per_class: int, seed: int = 0,
                   held_out: int | None = None) -> Path:
    """Writes task `name` as an image folder with `train_per_class` train images per class.

    Val and test are the same for every `train_per_class` and `seed` of a task's source split,
    so results at different training sizes are measured on the same images.

    Args:
        name: A key of TASKS.
        root: Where DIR/{train,val,test}/<class>/ is written (created).
        train_per_class: Train images per class, at most the task's `max_train`.
        seed: Which train images are drawn (val and test do not change with it).
        held_out: At most this many val and this many test images per class: the first ones of the
            task's fixed val and test (a smaller, quicker evaluation on the same images). None: all.

    Returns:
        The folder written.

    Raises:
        DataError: Unknown task, too many train images asked for, a `held_out` under 1, or its package
            is missing.
    """
    if name not in TASKS:
        raise DataError(f"unknown real task {name!r}; valid: {', '.join(TASKS)}")
    task = TASKS[name]
    if not 1 <= train_per_class <= task.max_train:
        raise DataError(f"{name}: train_per_class must be in 1..{task.max_train}, got {train_per_class}")
    if held_out is not None and held_out < 1:
        raise DataError(f"{name}: held_out must be at least 1 (or None: all val and test images), got {held_out}")
    if not available(name):
        raise DataError(f"the {name} task needs the {task.package} package: pip install {task.package}"
                        + (" --no-deps" if task.package == "animal-mnist" else ""))
    splits = _MAKERS[name](task, train_per_class, seed)
    root = Path(root)
    for split, per_class in splits.items():
        for cls, images in per_class.items():
            images = images if split == "train" or held_out is None else images[:held_out]
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                Image.fromarray(img).save(folder / f"{cls}_{i:04d}.png")
    return root


Splits = dict[str, dict[str, list[np.ndarray]]]


def _split_by_index(images: np.ndarray, labels: np.ndarray, classes: list[str], task: RealTask,
                    train_per_class: int, seed: int) -> Splits:
    """Test, then val, from a fixed permutation of each class; train from the rest with `seed`.

    Exact duplicates are dropped first (the silhouettes hold about 3%), so that no image is both
    trained on and tested on.
    """
    out: Splits = {"train": {}, "val": {}, "test": {}}
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    unique = np.zeros(len(images), bool)
    unique[first] = True
    for label, cls in enumerate(classes):
        idx = np.random.default_rng(1000 + label).permutation(np.flatnonzero((labels == label) & unique))
        test, val, rest = idx[:task.test], idx[task.test:task.test + task.val], idx[task.test + task.val:]
        train = np.random.default_rng(seed * 7919 + label).choice(rest, size=train_per_class, replace=False)
        for split, chosen in (("train", train), ("val", val), ("test", test)):
            out[split][cls] = [images[i] for i in chosen]
    return out


def _faces(task: RealTask, train_per_class: int, seed: int) -> Splits:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25) floats in 0-1
    labels = np.repeat([0, 1], 100)  # the first 100 are faces
    return _split_by_index(images, labels, ["face", "nonface"], task, train_per_class, seed)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: the silhouettes ship as pickled ndarrays."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")


def _silhouette_arrays() -> tuple[np.ndarray, np.ndarray]:
    folder = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    with gzip.open(str(folder / "animal_data_version_3.gz"), "rb") as f:
        images = np.asarray(_ArraysOnly(f).load(), dtype=np.uint8)
    with gzip.open(str(folder / "animal_label_version_3.gz"), "rb") as f:
        labels = np.asarray(_ArraysOnly(f).load())
    return images, labels


def _silhouettes(task: RealTask, train_per_class: int, seed: int) -> Splits:
    images, labels = _silhouette_arrays()
    classes = [f"animal{k}" for k in range(int(labels.max()) + 1)]  # the package names no classes
    return _split_by_index(images, labels, classes, task, train_per_class, seed)


def _texture_photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3:  # RGB photo -> grey, ITU-R 601 luma
        img = (img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)
    return img


def _patches(photo: np.ndarray, band: tuple[float, float], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` square patches cut wholly inside the band of rows, resized to TEXTURE_SIZE."""
    h, w = photo.shape
    top, bottom = int(band[0] * h), int(band[1] * h)
    out = []
    for _ in range(n):
        side = int(rng.integers(TEXTURE_PATCH[0], min(TEXTURE_PATCH[1], bottom - top) + 1))
        y, x = int(rng.integers(top, bottom - side + 1)), int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(photo[y:y + side, x:x + side])
        out.append(np.asarray(patch.resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.Resampling.BILINEAR)))
    return out


def _textures(task: RealTask, train_per_class: int, seed: int) -> Splits:
    out: Splits = {"train": {}, "val": {}, "test": {}}
    sizes = {"train": train_per_class, "val": task.val, "test": task.test}
    for k, name in enumerate(TEXTURE_PHOTOS):
        photo = _texture_photo(name)
        for split, band in TEXTURE_BANDS.items():
            # val and test are fixed per class; train patches vary with the seed
            rng = np.random.default_rng((seed * 7919 if split == "train" else 0) + 31 * k + len(split))
            out[split][name] = _patches(photo, band, sizes[split], rng)
    return out


_MAKERS: dict[str, Callable[[RealTask, int, int], Splits]] = {
    "textures": _textures, "silhouettes": _silhouettes, "faces": _faces,
}
