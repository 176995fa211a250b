"""tools.ingest.raster: PNG and JPEG made here, decompression bombs, and the decoder child."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tools.ingest.raster as raster
from tests.tools.ingest.helpers import one_line, segfault
from tools.errors import IngestError
from tools.ingest.fuzz import png_bombs
from tools.ingest.guard import DecoderCrashedError, ImageTooLargeError
from tools.ingest.loader import load_image


def gradient(h: int = 40, w: int = 60, top: int = 255) -> np.ndarray:
    return np.tile(np.linspace(0, top, w), (h, 1))


def test_png_8bit_grey(tmp_path: Path) -> None:
    arr = gradient().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(img.pixels, arr)
    np.testing.assert_array_equal(img.display, arr)
    assert img.source_format == "png" and img.spacing_mm is None and img.spacing_source is None
    assert img.meta["modality"] == "unknown" and img.meta["bits_stored"] == 8


def test_png_16bit_grey(tmp_path: Path) -> None:
    arr = gradient(top=4095).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.display.dtype == np.uint8 and img.display.shape == arr.shape
    assert img.display[:, 0].max() == 0 and img.display[:, -1].min() == 255
    assert (np.diff(img.display[0].astype(int)) >= 0).all()
    assert img.meta["bits_stored"] == 16


def test_png_rgba_becomes_rgb_and_grey_rgb_becomes_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    img = load_image(tmp_path / "c.png")
    assert img.pixels.shape == (30, 20, 3) and img.display.shape == (30, 20, 3)
    np.testing.assert_array_equal(img.pixels, rgba[..., :3])

    grey = gradient().astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey-rgb.png")
    img = load_image(tmp_path / "grey-rgb.png")
    assert img.pixels.shape == grey.shape
    np.testing.assert_array_equal(img.pixels, grey)


def test_jpeg_colour_and_grey(tmp_path: Path) -> None:
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[:, :32, 0] = 200  # red left half, blue right half
    rgb[:, 32:, 2] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    img = load_image(tmp_path / "c.jpg")
    assert img.source_format == "jpeg" and img.pixels.shape == (48, 64, 3)
    assert img.pixels[:, :24, 0].mean() > 150 and img.pixels[:, 40:, 2].mean() > 150

    grey = gradient(48, 64).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpeg", quality=95)
    img = load_image(tmp_path / "g.jpeg")
    assert img.pixels.shape == (48, 64)
    assert np.abs(img.pixels.astype(int) - grey).mean() < 3


# ---------------------------------------------------------------------------------------------
# Broken files and bombs
# ---------------------------------------------------------------------------------------------
def test_png_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "bomb.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "bigger.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("bomb.png", "bigger.png"):  # over the limit, and over twice the limit
        with pytest.raises(IngestError, match=re.escape(f"{name}: image is too large")):
            load_image(tmp_path / name)


def test_png_bomb_under_a_lowered_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError):
        load_image(tmp_path / "b.png")


@pytest.mark.parametrize("name", sorted(png_bombs()))
def test_png_bombs_are_refused_before_decoding(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(png_bombs()[name])
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(tmp_path / name)
    assert "too large" in one_line(info.value, name)
    assert time.perf_counter() - start < 2  # refused from the header, not after inflating


def test_truncated_png_is_an_ingest_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=r"t\.png: PNG data cannot be decoded"):
        load_image(tmp_path / "t.png")


def test_png_decoding_is_isolated_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "p.png")
    monkeypatch.setattr(raster, "decode_raster", segfault)  # as if libpng / zlib crashed
    with pytest.raises(DecoderCrashedError, match=r"^p\.png: decoder crashed"):
        load_image(tmp_path / "p.png")
