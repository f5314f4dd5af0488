"""Robust image decoding: any common file mode in, (H, W, 3) uint8 RGB out."""
from __future__ import annotations

import errno
import math
import os
import stat
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_REDUCIBLE_MODES = ("L", "LA", "La", "I", "F", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")  # Image.reduce's


# Pillow warns from Image.MAX_IMAGE_PIXELS (89 megapixels) on; such images are decoded reduced below it
# (see _reduction), so the warning says nothing more here. Its own guard against decompression bombs,
# an error above twice that, stays in force.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImageError(Exception):
    """An image file cannot be decoded; the message is the reason."""


def is_image_file(path: str | Path) -> bool:
    """Returns True when the extension (case-insensitive) is one of IMAGE_EXTENSIONS."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _link_reason(path: Path, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symbolic link loop: following the link never reaches a file"
    if path.is_symlink() and e.errno == errno.ENOENT:
        return f"broken symbolic link: points to {os.readlink(path)}, which does not exist"
    if e.errno == errno.ENOENT:
        return "no such file"
    return f"cannot read: {e.strerror or type(e).__name__}"


def _check_file(path: Path) -> None:
    """Raises BadImageError unless `path` is a non-empty regular file (symbolic links followed)."""
    try:
        info = path.stat()
    except OSError as e:  # a dangling link or a link loop is listed in the folder but cannot be read
        raise BadImageError(_link_reason(path, e)) from e
    if not stat.S_ISREG(info.st_mode):
        raise BadImageError("not a regular file (a folder, pipe or device)")
    if info.st_size == 0:
        raise BadImageError("empty file (0 bytes)")


def _open_loaded(path: Path, draft_size: int | None = None) -> Image.Image:
    """Opens and fully decodes an image, so truncation surfaces here and not in a worker later."""
    _check_file(path)
    try:
        with Image.open(path) as im:
            factor = _reduction(im.size)
            if draft_size is not None:  # JPEG only: decode at 1/2..1/8 scale, still reads every byte
                im.draft("RGB", (draft_size, draft_size))
            elif factor > 1:  # JPEG decodes reduced by itself (up to 8x); other formats are reduced after
                im.draft("RGB", (-(-im.size[0] // factor), -(-im.size[1] // factor)))
            im.load()
            if draft_size is None:
                im = _reduced(im, _reduction(im.size))
                ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of a 100-megapixel image
            return im
    except BadImageError:
        raise
    # Pillow's format plugins raise assorted exception types on corrupt data (OSError, SyntaxError,
    # struct.error, IndexError...); every one of them means "this file cannot be used".
    except Exception as e:  # noqa: BLE001
        raise BadImageError(_reason(e)) from e


def _reduction(size: tuple[int, int]) -> int:
    """The smallest whole factor that brings an image of `size` (width, height) under Pillow's
    MAX_IMAGE_PIXELS, the size it calls a possible decompression bomb (1 for smaller images).

    No input a classifier trains on needs more: a 13000 x 13000 scan decoded in full takes 0.5 GB
    as RGB, and twice that again while it is converted.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if not limit or size[0] * size[1] <= limit:
        return 1
    return math.ceil(math.sqrt(size[0] * size[1] / limit))


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """`im` reduced by `factor` (box filter over factor x factor blocks), its full-size pixels released."""
    if factor <= 1:
        return im
    if im.mode not in _REDUCIBLE_MODES:
        im = to_rgb(im)
    small = im.reduce(factor)
    im.close()
    return small


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "cannot identify image file" in text:
        return "not a decodable image (unknown or corrupt format)"
    if "truncated" in text.lower():
        return "truncated image data"
    if isinstance(e, Image.DecompressionBombError):
        return f"too large to decode safely ({text.split(', could be')[0]})"
    return f"cannot decode: {text}"


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    # 16-bit (and 32-bit 'I', as Pillow opens 16-bit PNGs) span 0..65535: scale by 255/65535
    # instead of clipping, which would turn almost every pixel white.
    arr = np.asarray(im).astype(np.float64)
    return Image.fromarray(np.round(np.clip(arr, 0, 65535) / 257.0).astype(np.uint8), mode="L")


def _float_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.round(np.clip(arr, 0, 255)).astype(np.uint8), mode="L")


def _composite_on_white(im: Image.Image) -> Image.Image:
    # Transparent pixels often hold black or garbage colour; a white page is what viewers show.
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Converts a decoded image of any Pillow mode to 8-bit RGB.

    Grayscale is replicated, palette and alpha images are composited on white, CMYK/YCbCr/LAB are
    converted by Pillow, 16-bit data is scaled down to 8 bits.
    """
    if im.mode == "RGB":
        return im  # convert() would copy it
    if im.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(im).convert("RGB")
    if im.mode == "F":
        return _float_to_l(im).convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in _ALPHA_MODES:
        return _composite_on_white(im)
    return im.convert("RGB")


def load_pil(path: str | Path) -> Image.Image:
    """Decodes an image file into an RGB PIL image with its EXIF orientation applied.

    Raises:
        BadImageError: Zero-byte, truncated, unreadable or non-image file.
    """
    return to_rgb(_open_loaded(Path(path)))


def load_image(path: str | Path) -> np.ndarray:
    """Decodes an image file into an RGB array with its EXIF orientation applied.

    Returns:
        The image, shape (H, W, 3), uint8.

    Raises:
        BadImageError: Zero-byte, truncated, unreadable or non-image file.
    """
    return np.array(load_pil(path))  # a writable copy: np.asarray of a PIL image is read-only


def load_images(paths: Sequence[str | Path]) -> list[np.ndarray | BadImageError]:
    """Decodes several files in parallel threads (PIL releases the GIL while it decodes): for each
    path, in order, its image (as `load_image`) or the BadImageError that says why it cannot be read."""

    def one(path: str | Path) -> np.ndarray | BadImageError:
        try:
            return load_image(path)
        except BadImageError as e:
            return e

    workers = min(8, os.cpu_count() or 1)
    if workers == 1 or len(paths) < 2:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def verify_image(path: str | Path, draft_size: int = 64) -> None:
    """Decodes the whole file cheaply (JPEG draft mode) to catch truncation and corruption.

    Raises:
        BadImageError: The file cannot be decoded; the message is the reason.
    """
    _open_loaded(Path(path), draft_size=draft_size)
