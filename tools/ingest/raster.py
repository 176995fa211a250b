"""PNG and JPEG files into a ``LoadedImage``, through Pillow in the isolated decoder child.

Raster files carry no pixel spacing and no modality: spacing stays None (measurements are in
pixels) and the modality is ``unknown``. Text chunks and EXIF are never read into ``meta``
(they can hold names). Pillow's C decoders (zlib, libpng, libjpeg) run in the child process of
``tools.ingest.guard.run_isolated``, like the DICOM codecs, and decompression bombs are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError
from tools.image import LoadedImage
from tools.ingest.guard import DEFAULT_DECODE_TIMEOUT_S, ImageTooLargeError, run_isolated
from tools.ingest.values import one_line
from tools.ingest.windowing import percentile_window

__all__ = ["decode_raster", "load_raster"]


def load_raster(p: Path, decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> LoadedImage:
    """Read a PNG or JPEG file (``decode_raster``) in the isolated decoder child.

    The pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``) is read here, in the caller's process, so
    that a caller's (or a test's) setting of it reaches the child.

    Raises:
        NotAnImageError: Pillow does not recognise the file as PNG or JPEG.
        ImageTooLargeError: more pixels than ``Image.MAX_IMAGE_PIXELS``.
        IngestError: broken data; the guard's ``DecoderCrashedError`` / ``DecoderTimeoutError``.
    """
    from PIL import Image  # Pillow only when a raster file comes in

    limit = Image.MAX_IMAGE_PIXELS
    return run_isolated(p.name, decode_raster, (p, limit), decode_timeout_s)


def decode_raster(p: Path, max_pixels: int | None = None) -> LoadedImage:
    """Read a PNG or JPEG through Pillow, refusing decompression bombs.

    Runs in the decoder child (a public module-level name: the child receives it by
    reference); ``max_pixels`` is the parent's ``Image.MAX_IMAGE_PIXELS``, applied here before
    the file is opened (None keeps this process's own setting).

    ``Image.MAX_IMAGE_PIXELS`` is enforced strictly: above it Pillow only warns (and errors at
    twice the limit); here the warning is an error too. EXIF orientation is applied, since
    photos of films are often rotated by it. RGB images whose channels are equal are stored as
    greyscale.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=["PNG", "JPEG"]) as opened:
                fmt = str(opened.format)
                opened.load()
                im = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"{p.name}: not a DICOM, PNG or JPEG image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = one_line(exc)
        raise ImageTooLargeError(f"{p.name}: image is too large to load safely ({reason})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for broken streams
        reason = one_line(exc)
        raise IngestError(f"{p.name}: {_fmt_guess(p)} data cannot be decoded ({reason})") from exc

    pixels, bits = _pillow_pixels(im)
    if pixels.ndim == 3 and _is_grey_rgb(pixels, tolerance=0 if fmt == "PNG" else 2):
        pixels = pixels[..., 0].copy()  # lossy JPEG chroma can differ by a level or two
    display = pixels if pixels.dtype == np.uint8 else percentile_window(pixels)
    meta: dict[str, Any] = {
        "modality": "unknown",
        "photometric": "MONOCHROME2" if pixels.ndim == 2 else "RGB",
        "rows": int(pixels.shape[0]),
        "columns": int(pixels.shape[1]),
        "frames": 1,
        "bits_stored": bits,
        "units": "a.u.",
    }
    return LoadedImage(
        pixels=pixels,
        display=display,
        spacing_mm=None,
        spacing_source=None,
        meta=meta,
        source_format=fmt.lower(),
        notes=[f"{fmt} files carry no pixel spacing; measurements are in pixels"],
    )


def _pillow_pixels(im: Any) -> tuple[np.ndarray, int]:
    """Pillow image -> ``(H, W)`` grey or ``(H, W, 3)`` RGB array, and its bit depth."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16).copy(), 16
    if mode in ("I", "F"):  # 32-bit integer / float grey
        return np.asarray(im).copy(), 32
    if mode in ("1", "L", "LA"):
        return np.asarray(im.convert("L")).copy(), 8
    return np.asarray(im.convert("RGB")).copy(), 8  # RGB, RGBA, P, CMYK, YCbCr, ...


def _is_grey_rgb(rgb: np.ndarray, tolerance: int) -> bool:
    """Whether an ``(H, W, 3)`` image is greyscale saved as RGB (common for exported scans)."""
    c = rgb.astype(np.int16)
    return bool(
        np.abs(c[..., 0] - c[..., 1]).max() <= tolerance
        and np.abs(c[..., 0] - c[..., 2]).max() <= tolerance
    )


def _fmt_guess(p: Path) -> str:
    """The raster format implied by a file's suffix, for error messages."""
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(p.suffix.lower(), "image")
