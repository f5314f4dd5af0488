"""Small generated image-folder datasets: the demo's tasks and the tests' fixtures.

Three tasks that share low-level structure (edges, colours, contrast) but not labels, so that
features learned on one transfer to another: `shapes` (which object is drawn), `textures` and
`patterns` (which of two different sets of repeated motifs fills the image).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring")
TEXTURES = ("stripes_h", "stripes_v", "checker", "dots", "diagonal")
PATTERNS = ("grid", "rings", "crosshatch", "zigzag", "blobs")
TASKS = {"shapes": SHAPES, "textures": TEXTURES, "patterns": PATTERNS}


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # Noisy background around a random colour: the class must not be readable from the mean colour.
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _draw_shape(img: Image.Image, cls: str, rng: np.random.Generator) -> None:
    size = img.width
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.35) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    fill = _colour(rng)
    box = (cx - r, cy - r, cx + r, cy + r)
    if cls == "circle":
        draw.ellipse(box, fill=fill)
    elif cls == "square":
        a = rng.uniform(0, math.pi / 2)
        pts = [(cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2)) for k in range(4)]
        draw.polygon(pts, fill=fill)
    elif cls == "triangle":
        a = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
               for k in range(3)]
        draw.polygon(pts, fill=fill)
    elif cls == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif cls == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    else:
        raise ValueError(f"unknown shape {cls!r}; valid: {', '.join(SHAPES)}")


def _draw_texture(img: Image.Image, cls: str, rng: np.random.Generator) -> None:
    size = img.width
    draw = ImageDraw.Draw(img)
    period = int(rng.integers(max(4, size // 10), max(6, size // 4)))
    fill = _colour(rng)
    offset = int(rng.integers(0, period))
    if cls == "stripes_h":
        for y in range(-offset, size, period):
            draw.rectangle((0, y, size, y + period // 2), fill=fill)
    elif cls == "stripes_v":
        for x in range(-offset, size, period):
            draw.rectangle((x, 0, x + period // 2, size), fill=fill)
    elif cls == "checker":
        for i, y in enumerate(range(-offset, size, period)):
            for j, x in enumerate(range(-offset, size, period)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=fill)
    elif cls == "dots":
        r = period / 4
        for y in range(-offset, size + period, period):
            for x in range(-offset, size + period, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif cls == "diagonal":
        for k in range(-size - offset, size * 2, period):
            draw.line((k, 0, k + size, size), fill=fill, width=max(1, period // 3))
    else:
        raise ValueError(f"unknown texture {cls!r}; valid: {', '.join(TEXTURES)}")


def _draw_pattern(img: Image.Image, cls: str, rng: np.random.Generator) -> None:
    size = img.width
    draw = ImageDraw.Draw(img)
    period = int(rng.integers(max(5, size // 9), max(8, size // 4)))
    fill, width = _colour(rng), max(1, period // 4)
    if cls == "grid":
        for k in range(int(rng.integers(0, period)), size, period):
            draw.line((k, 0, k, size), fill=fill, width=width)
            draw.line((0, k, size, k), fill=fill, width=width)
    elif cls == "rings":
        cx, cy = rng.uniform(0, size, size=2)
        for r in range(period // 2, 2 * size, period):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=width)
    elif cls == "crosshatch":
        for k in range(-size, 2 * size, period):
            draw.line((k, 0, k + size, size), fill=fill, width=width)
            draw.line((k, size, k + size, 0), fill=fill, width=width)
    elif cls == "zigzag":
        for y in range(0, size + period, period):
            pts = [(x, y + (period // 2 if i % 2 else 0))
                   for i, x in enumerate(range(-period, size + period, period // 2 + 1))]
            draw.line(pts, fill=fill, width=width)
    elif cls == "blobs":
        for _ in range(int(rng.integers(6, 14))):
            cx, cy = rng.uniform(0, size, size=2)
            rx, ry = rng.uniform(size / 20, size / 7, size=2)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    else:
        raise ValueError(f"unknown pattern {cls!r}; valid: {', '.join(PATTERNS)}")


_DRAWERS: dict[str, Callable] = {"shapes": _draw_shape, "textures": _draw_texture, "patterns": _draw_pattern}


def make_image(task: str, cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one RGB image of class `cls` of `task` (a key of TASKS)."""
    img = _background(rng, size)
    _DRAWERS[task](img, cls, rng)
    return img


def make_image_folder(
    root: str | Path,
    task: str = "shapes",
    *,
    train_per_class: int = 20,
    val_per_class: int = 10,
    test_per_class: int = 0,
    size: int = 64,
    classes: tuple[str, ...] | None = None,
    split: bool = True,
    seed: int = 0,
) -> Path:
    """Writes a generated dataset as an image folder and returns its root.

    With `split`, the layout is `root/{train,val[,test]}/<class>/*.png`; without it, all images of
    a class go to `root/<class>/` (train_per_class + val_per_class each).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for cls in classes or TASKS[task]:
        for split_name, n in counts.items():
            folder = root / split_name / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(task, cls, size, rng).save(folder / f"{split_name}_{i:04d}.png")
    return root


def draw_letter(ch: str, rng: np.random.Generator, size: int = 32, font: str | None = None) -> Image.Image:
    """A white letter on black, of random size (18-27 px) and offset (3 px either way): 'b' mirrored is 'd',
    'p' is 'q', so sets of them are ones where mirroring changes the class. `font`: a TrueType file, or
    None for PIL's bundled font."""
    from PIL import ImageFont

    points = int(rng.integers(18, 28))
    face = ImageFont.truetype(font, points) if font else ImageFont.load_default(points)
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    left, top, right, bottom = d.textbbox((0, 0), ch, font=face)
    dx, dy = rng.integers(-3, 4, size=2)
    d.text(((size - right + left) / 2 - left + dx, (size - bottom + top) / 2 - top + dy), ch, fill=255, font=face)
    return img
