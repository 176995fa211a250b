"""One DICOM Part 10 file into a ``LoadedImage``: parse -> check -> decode -> render.

* ``pixels`` are modality values (CT in Hounsfield units), every frame kept;
* ``display`` is a ``uint8`` rendering of the middle frame in which bright always means dense
  (MONOCHROME1 is inverted), through the file's own VOI LUT / window when it has one
  (``tools.ingest.windowing``);
* spacing and metadata come from ``tools.ingest.dicom_meta`` (a whitelist: no identifiers).

Files are parsed without ``force=True``: the caller has seen the ``DICM`` prefix, so nothing is
guessed. Header dimensions are checked before decoding, uncompressed pixel data is checked for
length, and compressed pixel data is decoded in the isolated child process
(``tools.ingest.guard.run_isolated``), because C codecs fed corrupt data can crash or hang.
pydicom is imported inside the functions that need it, so that the CLI and the app start
without its import cost.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.dicom_meta import dicom_meta, dicom_spacing, dicom_units
from tools.ingest.guard import (
    DEFAULT_DECODE_TIMEOUT_S,
    TruncatedImageError,
    check_dimensions,
    run_isolated,
)
from tools.ingest.values import as_int, one_line
from tools.ingest.windowing import percentile_window, to_uint8, voi_display

__all__ = [
    "DICOM_HEADER_BYTES",
    "PREAMBLE_BYTES",
    "decode_array",
    "decode_pixels",
    "has_dicm_prefix",
    "is_bare_dicom",
    "load_dicom",
    "read_checked_dicom",
]

# The DICOM Part 10 file format: a 128-byte preamble (free for the writer to fill: what
# ``check_preamble`` inspects) followed by the "DICM" prefix.
PREAMBLE_BYTES = 128
_DICOM_MAGIC = b"DICM"
# Bytes to read from the start of a file to tell whether it is DICOM Part 10 (preamble + prefix).
DICOM_HEADER_BYTES = PREAMBLE_BYTES + len(_DICOM_MAGIC)

# A dataset written without the Part 10 header starts with a group 0008 (or 0002) tag, little
# or big endian. Such files are refused with a clear message rather than parsed with
# ``force=True``, which would read arbitrary bytes as a dataset.
_BARE_DICOM_STARTS = {b"\x08\x00\x05\x00", b"\x00\x08\x00\x05", b"\x08\x00\x08\x00",
                      b"\x00\x08\x00\x08", b"\x02\x00\x00\x00", b"\x00\x02\x00\x00",
                      b"\x08\x00\x00\x00", b"\x00\x08\x00\x00"}  # (0008,0000) group length

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# The package to install per compressed transfer syntax when no decoder for it is installed.
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "python-gdcm",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE Lossless
}
# pydicom names decoder plugins; these are the packages that provide them.
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pyjpegls": "pyjpegls", "pylibjpeg": "pylibjpeg",
                    "pillow": "pillow"}


def has_dicm_prefix(head: bytes) -> bool:
    """Whether the first ``DICOM_HEADER_BYTES`` of a file end in the Part 10 ``DICM`` prefix."""
    return head[PREAMBLE_BYTES:DICOM_HEADER_BYTES] == _DICOM_MAGIC


def is_bare_dicom(head: bytes) -> bool:
    """Whether a file starts like a DICOM dataset written without the Part 10 header."""
    return head[:4] in _BARE_DICOM_STARTS


def read_checked_dicom(p: Path) -> tuple[Any, Any]:
    """Parse a DICOM file and check everything knowable before decoding: ``(dataset, tsuid)``.

    Checks: the header parses, pixel data is present, a transfer syntax is named, the declared
    dimensions are sane, and uncompressed pixel data is as long as the header says.

    Raises:
        IngestError: unparsable header, no pixel data or no transfer syntax; the guard's
            ``ImageTooLargeError`` / ``InvalidDimensionsError`` / ``TruncatedImageError``.
    """
    import pydicom

    try:
        with warnings.catch_warnings():  # malformed values warn; the checks below decide
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p)  # no force=True: the magic was checked, nothing is guessed
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({one_line(exc)})") from exc

    try:
        has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        file_meta = getattr(ds, "file_meta", None)
        tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    except Exception as exc:  # lazily parsed elements can fail on first access
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({one_line(exc)})") from exc
    if not has_pixels:
        raise IngestError(
            f"{p.name}: DICOM file has no pixel data (not an image object, or truncated)"
        )
    if tsuid is None:
        raise IngestError(f"{p.name}: DICOM file names no transfer syntax")
    try:
        check_dimensions(p.name, as_int(ds.get("Rows")), as_int(ds.get("Columns")),
                         as_int(ds.get("NumberOfFrames")) or 1,
                         as_int(ds.get("SamplesPerPixel")) or 1)
        if not tsuid.is_compressed:
            _check_native_length(p.name, ds)
    except IngestError:
        raise
    except Exception as exc:  # a malformed element met while checking
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({one_line(exc)})") from exc
    return ds, tsuid


def load_dicom(p: Path, decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> LoadedImage:
    """Parse, check, decode and render one DICOM Part 10 file (its prefix already seen).

    Raises:
        IngestError: see ``read_checked_dicom`` and ``decode_pixels``; a malformed LUT or
            attribute met while rendering.
        UnsupportedImageError: no installed decoder reads the pixel data, or an unsupported
            photometric interpretation.
    """
    ds, tsuid = read_checked_dicom(p)
    arr, photometric = decode_pixels(p.name, ds, tsuid, decode_timeout_s)
    try:
        return _render_dicom(ds, tsuid, arr, photometric, p.name)
    except IngestError:
        raise
    except Exception as exc:  # a malformed LUT / attribute met while rendering
        raise IngestError(f"{p.name}: DICOM image cannot be rendered ({one_line(exc)})") from exc


def decode_pixels(name: str, ds: Any, tsuid: Any,
                  timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> tuple[np.ndarray, str]:
    """Decode pixel data (``decode_array``); compressed syntaxes in the isolated child process.

    Why: C codecs (OpenJPEG, libjpeg, RLE) fed corrupt data can segfault or loop forever;
    in the child that becomes ``DecoderCrashedError`` / ``DecoderTimeoutError``. Uncompressed
    data is a reshape of bytes already checked for length, so it decodes in-process.
    """
    if tsuid.is_compressed:
        return run_isolated(name, decode_array, (name, ds, tsuid), timeout_s)
    return decode_array(name, ds, tsuid)


def decode_array(name: str, ds: Any, tsuid: Any) -> tuple[np.ndarray, str]:
    """Decode the pixel data into an array and its photometric interpretation after decoding.

    Runs in the decoder child for compressed data (so it is a public module-level name: the
    child receives it by reference). The decoders turn YBR_FULL(_422) / YBR_RCT / YBR_ICT into
    RGB, so the returned interpretation, not the file's, says what the array holds.

    Shapes: ``(H, W)``, ``(F, H, W)``, ``(H, W, 3)`` or ``(F, H, W, 3)``; native byte order.
    """
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError as exc:
        raise UnsupportedImageError(
            f"{name}: no decoder exists in pydicom for {tsuid.name} pixel data"
        ) from exc
    try:
        arr, info = decoder.as_array(ds)
    except Exception as exc:  # decoder plugins raise RuntimeError, ValueError, ...
        if not tsuid.is_compressed:
            raise IngestError(f"{name}: pixel data cannot be read ({one_line(exc)})") from exc
        raise UnsupportedImageError(_decoder_message(name, tsuid, decoder, exc)) from exc
    photometric = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation"))
    if not arr.dtype.isnative:  # big-endian transfer syntaxes; keep arrays native downstream
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, photometric


def _check_native_length(name: str, ds: Any) -> None:
    """Refuse uncompressed pixel data shorter than its header says.

    pydicom reads a truncated file without complaint (the element just comes back short), so
    the byte count is checked against Rows x Columns x Frames x Samples x BitsAllocated / 8
    (two thirds of that for uncompressed YBR_FULL_422, whose pixel pairs share one Cb / Cr).
    """
    key = next(k for k in _PIXEL_KEYWORDS if k in ds)
    rows, cols = as_int(ds.get("Rows")), as_int(ds.get("Columns"))
    bits = as_int(ds.get("BitsAllocated"))
    if not rows or not cols or not bits:
        raise IngestError(f"{name}: DICOM image has no valid Rows/Columns/BitsAllocated")
    frames = as_int(ds.get("NumberOfFrames")) or 1
    samples = as_int(ds.get("SamplesPerPixel")) or 1
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        expected = expected // 3 * 2  # chroma is shared by pixel pairs: 2 samples per pixel
    actual = len(ds[key].value or b"")
    if actual < expected:
        raise TruncatedImageError(
            f"{name}: pixel data is truncated ({actual} of {expected} bytes for "
            f"{frames} x {rows} x {cols} x {samples} samples at {bits} bits)"
        )


def _decoder_message(name: str, tsuid: Any, decoder: Any, exc: BaseException) -> str:
    """One line naming the transfer syntax, what was tried, and the package that would decode it.

    pydicom lists the plugins it has and those whose dependencies are missing; the suggestion is
    a missing one (the installed ones just failed), else the usual package for the syntax.
    """
    installed = list(decoder.available_plugins)
    missing = [m.split(" - ")[0].strip() for m in decoder.missing_dependencies]
    packages = [_PLUGIN_PACKAGES.get(m, m) for m in missing]
    if not installed:
        packages = [_DECODER_HINTS.get(str(tsuid), ""), *packages]
    suggestion = " or ".join(dict.fromkeys(p for p in packages if p))
    tried = (f"the installed decoders ({', '.join(installed)}) failed: {one_line(exc)}"
             if installed else "no decoder for it is installed")
    advice = f"; {suggestion} may decode it" if suggestion else ""
    return f"{name}: cannot decode {tsuid.name} pixel data: {tried}{advice}"


def _render_dicom(ds: Any, tsuid: Any, arr: np.ndarray, photometric: str,
                  name: str) -> LoadedImage:
    """Modality values, display, spacing and de-identified meta from a decoded DICOM."""
    notes: list[str] = []
    frames = as_int(ds.get("NumberOfFrames")) or 1

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        pixels, display = _render_grey(ds, arr, photometric, frames, notes)
    else:
        pixels, display = _render_colour(ds, arr, photometric, frames, name)

    spacing, source, spacing_notes = dicom_spacing(ds)
    notes += spacing_notes
    meta = dicom_meta(ds, tsuid)
    meta["frames"] = frames
    meta["units"] = dicom_units(ds, meta)
    return LoadedImage(
        pixels=pixels,
        display=display,
        spacing_mm=spacing,
        spacing_source=source,
        meta=meta,
        source_format="dicom",
        notes=notes,
    )


def _render_grey(
    ds: Any, arr: np.ndarray, photometric: str, frames: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Modality values for every frame, and the uint8 display of the middle frame.

    The display applies the file's VOI LUT or window (the way the acquiring site meant it to
    be seen); without one, or when the window is unusable, a 0.5-99.5 percentile window. For
    MONOCHROME1 (low values = white, common in CR) the display is inverted so that bright
    means dense everywhere; ``pixels`` keep the file's orientation.
    """
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds)
    # Rescaled values come back float64; float32 holds HU exactly at half the memory.
    pixels = values.astype(np.float32) if values.dtype.kind == "f" else values
    frame = pixels[len(pixels) // 2] if frames > 1 and pixels.ndim == 3 else pixels
    display = voi_display(ds, frame, notes)
    if display is None:
        display = percentile_window(frame)
    if photometric == "MONOCHROME1":
        display = 255 - display
    return pixels, display


def _render_colour(
    ds: Any, arr: np.ndarray, photometric: str, frames: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels for every frame and the uint8 RGB display of the middle frame."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    elif photometric != "RGB":
        raise UnsupportedImageError(f"{name}: photometric interpretation {photometric} "
                                    "is not supported")
    frame = arr[len(arr) // 2] if frames > 1 and arr.ndim == 4 else arr
    if frame.dtype == np.uint8:
        display = frame.copy()
    else:
        bits = int(np.iinfo(frame.dtype).bits) if frame.dtype.kind in "iu" else 8
        if photometric == "RGB":
            bits = as_int(ds.get("BitsStored")) or bits
        display = to_uint8(frame.astype(np.float64) / float(2**bits - 1))
    return arr, display
