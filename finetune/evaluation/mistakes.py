"""The misclassified images of an evaluation: misclassified.csv, most confident first, and a contact sheet."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from finetune import atomic
from finetune.data.images import BadImageError, load_image
from finetune.pathtext import FS_ENCODING, FS_ERRORS, escaped

CSV_COLUMNS = ("path", "true_class", "predicted_class", "predicted_probability", "true_probability")
SHEET_IMAGES = 16  # a 4 x 4 grid: each tile stays large enough to see what the image shows
SHEET_COLUMNS = 4
TILE = 160  # px of the image square in a tile; three text lines go below it
LABEL_HEIGHT = 48  # three lines of the 12 px font, 15 px apart, with a margin


@dataclass(frozen=True)
class Mistake:
    """One misclassified image.

    Attributes:
        path: The image file (str; surrogates where its name is not UTF-8).
        true: The true class index.
        predicted: The predicted class index (the argmax of the probabilities).
        predicted_probability: Probability of the predicted class.
        true_probability: Probability of the true class.
    """

    path: str
    true: int
    predicted: int
    predicted_probability: float
    true_probability: float


def find_mistakes(paths: Sequence[str | os.PathLike[str]], probs: np.ndarray, labels: np.ndarray) -> list[Mistake]:
    """The images whose top-1 class is not their label, the most confident mistakes first.

    Args:
        paths: One file per row of `probs`.
        probs: Class probabilities, shape (N, C).
        labels: True class indices, shape (N,).

    Returns:
        Mistakes sorted by the predicted class's probability, highest first (ties in input order).
    """
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    return [Mistake(os.fspath(paths[i]), int(labels[i]), int(predicted[i]), float(probs[i, predicted[i]]),
                    float(probs[i, labels[i]])) for i in order]


def write_mistakes_csv(mistakes: Sequence[Mistake], class_names: Sequence[str], path: Path) -> Path:
    """Writes misclassified.csv (CSV_COLUMNS), each path as the file system's bytes (see `finetune.pathtext`),
    whole under its name or not at all."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for m in mistakes:
        writer.writerow([m.path, class_names[m.true], class_names[m.predicted], f"{m.predicted_probability:.6f}",
                         f"{m.true_probability:.6f}"])
    return atomic.write_text(path, text.getvalue(), encoding=FS_ENCODING, errors=FS_ERRORS, newline="")


def contact_sheet(mistakes: Sequence[Mistake], class_names: Sequence[str], path: Path,
                  count: int = SHEET_IMAGES) -> Path:
    """A PNG grid of the first `count` mistakes: each image (fitted into a TILE square) above its true class,
    its predicted class with that class's probability, and its file name. Images that no longer decode are
    left out."""
    tiles = [_tile(m, class_names) for m in mistakes[:count]]
    tiles = [t for t in tiles if t is not None]
    columns = max(1, min(SHEET_COLUMNS, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * TILE, max(1, rows) * (TILE + LABEL_HEIGHT)), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * TILE, (k // columns) * (TILE + LABEL_HEIGHT)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.open_replacing(path, "wb") as f:  # a viewer never sees half a PNG
        sheet.save(f, format="PNG")
    return path


def _tile(m: Mistake, class_names: Sequence[str]) -> Image.Image | None:
    try:
        image = Image.fromarray(load_image(m.path))
    except BadImageError:
        return None
    scale = (TILE - 4) / max(image.size)  # small images are enlarged too: a 32 px image is a tile, not a dot
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (TILE, TILE + LABEL_HEIGHT), "white")
    tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    draw, font = ImageDraw.Draw(tile), ImageFont.load_default(size=12)
    lines = [(f"true: {class_names[m.true]}", "black"),
             (f"predicted: {class_names[m.predicted]} {m.predicted_probability:.2f}", "firebrick"),
             (escaped(Path(m.path).name), "dimgray")]
    for k, (text, colour) in enumerate(lines):
        draw.text((3, TILE + 1 + 15 * k), _fit(text, draw, font), fill=colour, font=font)
    return tile


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """`text`, cut with "..." so that it fits in a tile's width."""
    if draw.textlength(text, font=font) <= TILE - 6:
        return text
    while text and draw.textlength(text + "...", font=font) > TILE - 6:
        text = text[:-1]
    return text + "..."
