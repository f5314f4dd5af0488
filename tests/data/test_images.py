"""Decoding: every common mode gives (H, W, 3) uint8 RGB; broken files raise BadImageError."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finetune.data.images import BadImageError, load_image, load_pil, verify_image

from .conftest import save_rgb, truncated_jpeg


def _assert_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.shape == (*shape, 3) and arr.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 high, left half red, right half blue; orientation 6 = display rotated 90 deg clockwise.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    _assert_rgb(out, (40, 20))
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the left (red) half is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_is_replicated(tmp_path, mode):
    Image.new(mode, (12, 8), 255 if mode == "1" else 77).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    _assert_rgb(out, (8, 12))
    assert (out == (255 if mode == "1" else 77)).all()


def test_gray_alpha_composited_on_white(tmp_path):
    Image.new("LA", (6, 6), (0, 0)).save(tmp_path / "la.png")  # black, fully transparent
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    _assert_rgb(out, (4, 4))
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[3, 3]) == (255, 255, 255)  # index 0 is transparent -> white page


def test_rgba_half_transparent_black_over_white(tmp_path):
    Image.new("RGBA", (5, 5), (0, 0, 0, 128)).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _assert_rgb(out, (5, 5))
    assert np.all(np.abs(out.astype(int) - 127) <= 2)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)  # pure cyan
    out = load_image(tmp_path / "c.jpg").astype(int)
    _assert_rgb(out.astype(np.uint8), (8, 8))
    assert out[..., 0].max() < 40 and out[..., 1].min() > 215 and out[..., 2].min() > 215


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
    Image.fromarray(ramp).save(tmp_path / "16.png")
    out = load_image(tmp_path / "16.png")
    _assert_rgb(out, (4, 64))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[..., 0].mean() <= 135  # clipping would make nearly everything 255
    assert (out[..., 0] == out[..., 2]).all()


def test_load_pil_is_rgb(tmp_path):
    save_rgb(tmp_path / "x.bmp", size=(7, 9))
    im = load_pil(tmp_path / "x.bmp")
    assert im.mode == "RGB" and im.size == (9, 7)


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        load_image(tmp_path / "z.jpg")


def test_text_named_png(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(BadImageError, match="not a decodable image"):
        load_image(tmp_path / "x.png")


def test_truncated_jpeg(tmp_path):
    with pytest.raises(BadImageError, match="truncated"):
        load_image(truncated_jpeg(tmp_path / "t.jpg"))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.symlink_to("gone/away.png"), "broken symbolic link: points to gone/away.png, which does not exist"),
    (lambda p: p.symlink_to(p.name), "symbolic link loop"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: None, "no such file"),
])
def test_unreadable_paths_are_bad_images_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(BadImageError, match=reason):
        verify_image(path)
    with pytest.raises(BadImageError, match=reason):
        load_image(path)


def test_working_symlink_is_followed(tmp_path):
    save_rgb(tmp_path / "real.png", size=(5, 6))
    (tmp_path / "link.png").symlink_to("real.png")
    assert np.array_equal(load_image(tmp_path / "link.png"), load_image(tmp_path / "real.png"))


def test_too_many_pixels_is_a_bad_image_not_a_crash(tmp_path, monkeypatch):
    save_rgb(tmp_path / "big.png", size=(20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this: 200 pixels
    with pytest.raises(BadImageError, match=r"too large to decode safely \(Image size \(400 pixels\) exceeds"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_an_image_over_pillows_warning_size_is_decoded_reduced_under_it(tmp_path, monkeypatch, fmt):
    """Between Image.MAX_IMAGE_PIXELS (scaled down here: 30,000) and twice that (Pillow's error) an image is
    decoded reduced by the smallest whole factor that brings it under: 54,000 px -> 2. PNG: each pixel is the
    mean of a 2 x 2 block of the file's; JPEG decodes at half scale by itself (draft)."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"big.{fmt}"
    pixels = rng.integers(0, 256, (180, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    got = load_image(path)
    assert got.shape == (90, 150, 3)
    if fmt == "png":  # the mean of each 2 x 2 block of the lossless file, to the nearest integer
        blocks = pixels.reshape(90, 2, 150, 2, 3).astype(np.float64).mean(axis=(1, 3))
        assert np.abs(got.astype(np.float64) - blocks).max() <= 0.5

