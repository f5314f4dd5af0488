"""Photo crops: 5 classes of crops cut from scikit-image's colour photos, 64-96 px, JPEG and PNG mixed.

Each class is one photo (astronaut, coffee, chelsea, rocket, hubble_deep_field); a crop is a random
square of the photo, resized to a random 64-96 px side and saved as JPEG or PNG at random. With
`splits`, train, val and test crops come from disjoint bands of each photo's columns, so no pixel
of a test crop was seen in training; without, every crop comes from the whole photo and the folder
is DIR/<class>/*, as a user's folder of crops would be.

    python benchmarks/photo_crops.py OUT --per-class 30     # 150 crops, DIR/<class>/*
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
SIDE = (64, 96)  # saved side in px, drawn uniformly
# Bands of each photo's columns (fractions of its width): train, val and test crops never overlap.
BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()[..., :3]


def _crops(photo: np.ndarray, columns: tuple[float, float], count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` random square crops inside a band of columns, each resized to a side in SIDE."""
    h, w = photo.shape[:2]
    left, right = int(columns[0] * w), int(columns[1] * w)
    out = []
    for _ in range(count):
        side = int(rng.integers(48, min(right - left, h, 160) + 1))  # source side; the band bounds it
        x, y = int(rng.integers(left, right - side + 1)), int(rng.integers(0, h - side + 1))
        size = int(rng.integers(SIDE[0], SIDE[1] + 1))
        out.append(Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC))
    return out


def _save(images: list[Image.Image], folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        if rng.random() < 0.5:
            img.save(folder / f"{i:04d}.jpg", quality=90)
        else:
            img.save(folder / f"{i:04d}.png")


def make_photo_crops(root: Path, per_class: int, seed: int = 0,
                     splits: dict[str, int] | None = None) -> Path:
    """Writes the crops: DIR/<class>/* with `per_class` each, or DIR/{train,val,test}/<class>/* with
    `splits[split]` each (train drawn with `seed`; val and test the same for every seed)."""
    root = Path(root)
    for label, name in enumerate(PHOTOS):
        photo = _photo(name)
        if splits is None:
            rng = np.random.default_rng(seed * 7919 + label)
            _save(_crops(photo, (0.0, 1.0), per_class, rng), root / name, rng)
            continue
        for split, count in splits.items():
            rng = np.random.default_rng((seed if split == "train" else 1000) * 7919 + label * 10 + len(split))
            _save(_crops(photo, BANDS[split], count, rng), root / split / name, rng)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_photo_crops(args.out, args.per_class, args.seed))


if __name__ == "__main__":
    main()
