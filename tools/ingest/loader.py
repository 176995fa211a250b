"""Loading DICOM, PNG and JPEG files into a ``LoadedImage``.

One entry point, ``load_image``, so that the CLI, the app and the agent's ingest node all read
files the same way. What comes out is safe to keep and to show a model:

* ``pixels`` are modality values (CT in Hounsfield units), every frame kept;
* ``display`` is a ``uint8`` rendering in which bright always means dense (MONOCHROME1 is
  inverted) using the file's own VOI LUT / window when it has one;
* ``spacing_mm`` comes from the file or stays None: it is never guessed;
* ``meta`` holds a whitelist of technical attributes only. Names, ids, dates, UIDs, institution
  and every free-text field are never read into it, because free text can hold PHI.

Every failure is a named ``IngestError`` with a one-line message that names the file and the
problem (``NotAnImageError`` for files that are not images, ``UnsupportedImageError`` for real
images no installed decoder can read). Only the file's *name* is quoted, never its folder.

The loader is split into small steps (sniff -> parse -> check -> decode -> render -> describe);
the hostile-input guards sit between them (``tools.ingest.guard``): the DICOM preamble is checked
for executable polyglots after sniffing, header dimensions before decoding, and every compressed
decoder (DICOM codecs, Pillow's PNG / JPEG) runs in an isolated child process with a timeout.
Folders (DICOM series) and NIfTI files are assembled into volumes by ``tools.ingest.volume``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.guard import (
    DEFAULT_DECODE_TIMEOUT_S,
    ImageTooLargeError,
    TruncatedImageError,
    check_dimensions,
    check_file_size,
    check_preamble,
    run_isolated,
)

__all__ = ["decode_pixels", "load_image", "percentile_window"]

# The DICOM Part 10 file format: a 128-byte preamble followed by the "DICM" prefix.
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

# The robust fallback window when a file carries no VOI LUT / window: percentiles, so that a few
# extreme pixels (metal, padding, burned-in text) do not flatten the rest of the image.
_PERCENTILE_WINDOW = (0.5, 99.5)

# A dataset written without the Part 10 header starts with a group 0008 (or 0002) tag, little
# or big endian. Such files are refused with a clear message rather than parsed with
# ``force=True``, which would read arbitrary bytes as a dataset.
_BARE_DICOM_STARTS = {b"\x08\x00\x05\x00", b"\x00\x08\x00\x05", b"\x08\x00\x08\x00",
                      b"\x00\x08\x00\x08", b"\x02\x00\x00\x00", b"\x00\x02\x00\x00",
                      b"\x08\x00\x00\x00", b"\x00\x08\x00\x00"}  # (0008,0000) group length

_MAGNIFICATION_NOTE = (
    "spacing is ImagerPixelSpacing, measured at the detector: distances in the patient are "
    "smaller by the radiographic magnification, which is not corrected"
)

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

# ---------------------------------------------------------------------------------------------
# De-identified metadata: a whitelist of technical attributes, by DICOM keyword.
# Value Representations are checked too: a CS value that breaks the CS rules (upper case,
# digits, space, underscore, 16 characters) is dropped, since a hostile or sloppy writer can
# put anything, including a name, into any element.
# ---------------------------------------------------------------------------------------------
_META_CODE = {  # CS: short codes
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "ImageLaterality": "laterality",
    "PatientOrientation": "patient_orientation",
    "PhotometricInterpretation": "photometric",
}
_META_INT = {  # US / IS
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "frames",
    "SamplesPerPixel": "samples_per_pixel",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PixelRepresentation": "pixel_representation",
}
_META_FLOAT = {  # DS, possibly multi-valued
    "PixelSpacing": "pixel_spacing",
    "ImagerPixelSpacing": "imager_pixel_spacing",
    "SliceThickness": "slice_thickness",
    "WindowCenter": "window_center",
    "WindowWidth": "window_width",
    "RescaleSlope": "rescale_slope",
    "RescaleIntercept": "rescale_intercept",
}
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")


def load_image(
    path: str | Path,
    *,
    allow_polyglot: bool = False,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
) -> LoadedImage:
    """Load a DICOM, PNG or JPEG file, a folder holding one DICOM series, or a NIfTI volume.

    DICOM is recognised by its ``DICM`` prefix at byte 128 (and parsed without ``force``, so
    arbitrary bytes are never read as a dataset); ``.nii`` / ``.nii.gz`` go to nibabel; anything
    else goes to Pillow, restricted to PNG and JPEG. A folder is read as one DICOM series and
    assembled into an ``(S, H, W)`` volume (see ``tools.ingest.volume``).

    Hostile input is checked before it is decoded: a DICOM preamble holding an executable / ZIP
    / TIFF header is refused (``allow_polyglot=True`` loads it and records a note); absurd
    dimensions are refused from the header; compressed pixel data is decoded in a child process
    that is killed after ``decode_timeout_s`` seconds.

    Raises:
        IngestError: the file is missing, truncated or has no pixel data; subclasses in
            ``tools.ingest.guard`` name hostile cases (``SuspiciousFileError``,
            ``ImageTooLargeError``, ``InvalidDimensionsError``, ``TruncatedImageError``,
            ``DecoderCrashedError``, ``DecoderTimeoutError``).
        NotAnImageError: the file is not DICOM, PNG, JPEG or NIfTI.
        UnsupportedImageError: the pixel data needs a decoder that is not installed or fails.
    """
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{p.name}: file not found")
    if p.is_dir():
        from tools.ingest.volume import load_series

        return load_series(p, allow_polyglot=allow_polyglot, decode_timeout_s=decode_timeout_s)
    if not p.is_file():
        raise IngestError(f"{p.name}: not a regular file")
    check_file_size(p.name, p.stat().st_size)
    with p.open("rb") as fh:
        head = fh.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    if not head:
        raise NotAnImageError(f"{p.name}: empty file")
    if head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC:
        note = check_preamble(p.name, head[:_DICOM_MAGIC_OFFSET], allow_polyglot=allow_polyglot)
        img = _load_dicom(p, decode_timeout_s)
        if note:
            img.notes.insert(0, note)
        return img
    if p.name.lower().endswith((".nii", ".nii.gz")):
        from tools.ingest.volume import load_nifti

        return load_nifti(p)
    if head[:4] in _BARE_DICOM_STARTS:
        raise NotAnImageError(
            f"{p.name}: looks like DICOM without the file header (no 'DICM' prefix at byte "
            "128); medloop reads only DICOM Part 10 files: re-save it with a DICOM tool"
        )
    from PIL import Image

    # Pillow's C decoders (zlib, libjpeg) run in the isolated child too; the pixel limit is read
    # here so that a caller's (or a test's) setting of Image.MAX_IMAGE_PIXELS reaches the child.
    limit = Image.MAX_IMAGE_PIXELS
    return run_isolated(p.name, _load_raster, (p, limit), decode_timeout_s)


# =============================================================================================
# DICOM
# =============================================================================================
def _read_checked_dicom(p: Path) -> tuple[Any, Any]:
    """Parse a DICOM file and check everything knowable before decoding: ``(dataset, tsuid)``.

    Checks: the header parses, pixel data is present, a transfer syntax is named, the declared
    dimensions are sane, and uncompressed pixel data is as long as the header says.
    """
    import pydicom  # imported here: the CLI and app start without pydicom's import cost

    try:
        with warnings.catch_warnings():  # malformed values warn; the checks below decide
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p)  # no force=True: the magic was checked, nothing is guessed
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({_one_line(exc)})") from exc

    try:
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        file_meta = getattr(ds, "file_meta", None)
        tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    except Exception as exc:  # lazily parsed elements can fail on first access
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({_one_line(exc)})") from exc
    if not has_pixels:
        raise IngestError(
            f"{p.name}: DICOM file has no pixel data (not an image object, or truncated)"
        )
    if tsuid is None:
        raise IngestError(f"{p.name}: DICOM file names no transfer syntax")
    try:
        check_dimensions(p.name, _int(ds.get("Rows")), _int(ds.get("Columns")),
                         _int(ds.get("NumberOfFrames")) or 1,
                         _int(ds.get("SamplesPerPixel")) or 1)
        if not tsuid.is_compressed:
            _check_native_length(p.name, ds)
    except IngestError:
        raise
    except Exception as exc:  # a malformed element met while checking
        raise IngestError(f"{p.name}: DICOM header cannot be parsed ({_one_line(exc)})") from exc
    return ds, tsuid


def _load_dicom(p: Path, decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> LoadedImage:
    """Parse, check, decode and render one DICOM file."""
    ds, tsuid = _read_checked_dicom(p)
    arr, photometric = decode_pixels(p.name, ds, tsuid, decode_timeout_s)
    try:
        return _render_dicom(ds, tsuid, arr, photometric, p.name)
    except IngestError:
        raise
    except Exception as exc:  # a malformed LUT / attribute met while rendering
        raise IngestError(f"{p.name}: DICOM image cannot be rendered ({_one_line(exc)})") from exc


def decode_pixels(name: str, ds: Any, tsuid: Any,
                  timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> tuple[np.ndarray, str]:
    """Decode pixel data; compressed syntaxes in the isolated child process.

    Why: C codecs (OpenJPEG, libjpeg, RLE) fed corrupt data can segfault or loop forever;
    in the child that becomes ``DecoderCrashedError`` / ``DecoderTimeoutError``. Uncompressed
    data is a reshape of bytes already checked for length, so it decodes in-process.
    """
    if tsuid.is_compressed:
        return run_isolated(name, _decode, (name, ds, tsuid), timeout_s)
    return _decode(name, ds, tsuid)


def _render_dicom(ds: Any, tsuid: Any, arr: np.ndarray, photometric: str,
                  name: str) -> LoadedImage:
    """Modality values, display, spacing and de-identified meta from a decoded DICOM."""
    notes: list[str] = []
    frames = _int(ds.get("NumberOfFrames")) or 1

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        pixels, display = _render_grey(ds, arr, photometric, frames, notes)
    else:
        pixels, display = _render_colour(ds, arr, photometric, frames, name)

    spacing, source, spacing_notes = _dicom_spacing(ds)
    notes += spacing_notes
    meta = _dicom_meta(ds, tsuid)
    meta["frames"] = frames
    if meta.get("modality") == "CT" and "RescaleIntercept" in ds:
        meta["units"] = "HU"
    else:
        meta["units"] = "a.u."
    return LoadedImage(
        pixels=pixels,
        display=display,
        spacing_mm=spacing,
        spacing_source=source,
        meta=meta,
        source_format="dicom",
        notes=notes,
    )


def _check_native_length(name: str, ds: Any) -> None:
    """Refuse uncompressed pixel data shorter than its header says.

    pydicom reads a truncated file without complaint (the element just comes back short), so
    the byte count is checked against Rows x Columns x Frames x Samples x BitsAllocated / 8
    (two thirds of that for uncompressed YBR_FULL_422, whose pixel pairs share one Cb / Cr).
    """
    key = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds)
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    bits = _int(ds.get("BitsAllocated"))
    if not rows or not cols or not bits:
        raise IngestError(f"{name}: DICOM image has no valid Rows/Columns/BitsAllocated")
    frames = _int(ds.get("NumberOfFrames")) or 1
    samples = _int(ds.get("SamplesPerPixel")) or 1
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        expected = expected // 3 * 2  # chroma is shared by pixel pairs: 2 samples per pixel
    actual = len(ds[key].value or b"")
    if actual < expected:
        raise TruncatedImageError(
            f"{name}: pixel data is truncated ({actual} of {expected} bytes for "
            f"{frames} x {rows} x {cols} x {samples} samples at {bits} bits)"
        )


def _decode(name: str, ds: Any, tsuid: Any) -> tuple[np.ndarray, str]:
    """Decode the pixel data into an array and its photometric interpretation after decoding.

    The decoders turn YBR_FULL(_422) / YBR_RCT / YBR_ICT into RGB, so the returned
    interpretation, not the file's, says what the array holds.

    Shapes: ``(H, W)``, ``(F, H, W)``, ``(H, W, 3)`` or ``(F, H, W, 3)``.
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
            raise IngestError(f"{name}: pixel data cannot be read ({_one_line(exc)})") from exc
        raise UnsupportedImageError(_decoder_message(name, tsuid, decoder, exc)) from exc
    photometric = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation"))
    if not arr.dtype.isnative:  # big-endian transfer syntaxes; keep arrays native downstream
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, photometric


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
    tried = (f"the installed decoders ({', '.join(installed)}) failed: {_one_line(exc)}"
             if installed else "no decoder for it is installed")
    advice = f"; {suggestion} may decode it" if suggestion else ""
    return f"{name}: cannot decode {tsuid.name} pixel data: {tried}{advice}"


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
    display = _voi_display(ds, frame, notes)
    if display is None:
        display = percentile_window(frame)
    if photometric == "MONOCHROME1":
        display = 255 - display
    return pixels, display


def _voi_display(ds: Any, frame: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """The file's VOI LUT / window scaled to uint8, or None when the file has no usable one."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not has_lut and not has_window:
        return None
    linear = _linear_window(ds) if not has_lut else None
    if linear is not None:  # the common case, done in float32 (pydicom's path uses float64)
        center, width = linear
        unit = frame.astype(np.float32)
        unit -= np.float32(center - 0.5)
        unit /= np.float32(width - 1.0)
        unit += np.float32(0.5)
        display = _to_uint8(unit)
        if display.min() == display.max() and frame.min() != frame.max():
            notes.append("the file's display window shows a blank image; "
                         "a percentile window is shown instead")
            return None
        return display
    try:
        if has_lut:
            out = apply_voi_lut(frame.astype(np.int64), ds).astype(np.float64)
            depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**depth - 1)
        else:
            out = apply_voi_lut(frame, ds).astype(np.float64)
            # The output range depends on bits stored and rescale; pydicom knows it, so ask it
            # with two values far outside any window instead of re-deriving the rule.
            lo, hi = (float(v) for v in apply_windowing(np.array([-1e12, 1e12]), ds))
    except Exception as exc:  # malformed window / LUT: fall back, and say so
        notes.append(f"the file's display window is unusable ({_one_line(exc)}); "
                     "a percentile window is shown instead")
        return None
    if hi == lo:
        return None
    display = _to_uint8((out - lo) / (hi - lo))
    if display.min() == display.max() and frame.min() != frame.max():
        notes.append("the file's display window shows a blank image; "
                     "a percentile window is shown instead")
        return None
    return display


def _linear_window(ds: Any) -> tuple[float, float] | None:
    """The file's first window ``(center, width)`` when it is a plain LINEAR one, else None.

    PS3.3 C.11.2.1.2.1: LINEAR maps ``x`` to ``(x - (c - 0.5)) / (w - 1) + 0.5`` clipped to
    [0, 1] (of the output range). Other functions (LINEAR_EXACT, SIGMOID) and unusable values
    go to pydicom's ``apply_voi_lut``.
    """
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    center, width = _floats(ds.get("WindowCenter")), _floats(ds.get("WindowWidth"))
    if function != "LINEAR" or not center or not width or width[0] < 1:
        return None
    return center[0], width[0]


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
            bits = _int(ds.get("BitsStored")) or bits
        display = _to_uint8(frame.astype(np.float64) / float(2**bits - 1))
    return arr, display


def _dicom_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None, list[str]]:
    """``(row, col)`` mm per pixel, the attribute it came from, and caveats.

    ``PixelSpacing`` is spacing in the patient; ``ImagerPixelSpacing`` (projection radiography)
    is at the detector, so lengths come out magnified. Invalid values (zero, negative, not two
    numbers) are reported and ignored rather than used: no spacing beats a wrong one.
    """
    notes: list[str] = []
    candidates: list[tuple[str, Any]] = [
        ("PixelSpacing", ds.get("PixelSpacing")),
        ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing")),
    ]
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    measures = _first(shared.get("PixelMeasuresSequence")) if shared is not None else None
    if measures is not None:  # enhanced multi-frame objects keep it in the functional groups
        candidates.insert(1, ("PixelMeasuresSequence.PixelSpacing", measures.get("PixelSpacing")))
    for source, raw in candidates:
        if raw is None:
            continue
        pair = _positive_pair(raw)
        if pair is None:
            notes.append(f"{source} {_fmt_raw(raw)} is not a valid spacing and was ignored")
            continue
        if source == "ImagerPixelSpacing":
            note = _MAGNIFICATION_NOTE
            factor = _float(ds.get("EstimatedRadiographicMagnificationFactor"))
            if factor and factor > 0:
                note += f" (the file estimates a magnification of {factor:.3g})"
            notes.append(note)
        return pair, source, notes
    if ds.get("SequenceOfUltrasoundRegions"):
        notes.append("ultrasound region calibration is not read; pixel spacing unknown")
    return None, None, notes


def _dicom_meta(ds: Any, tsuid: Any) -> dict[str, Any]:
    """The whitelisted technical attributes, as lower-case snake_case keys."""
    meta: dict[str, Any] = {}
    for keyword, key in _META_CODE.items():
        value = _code(ds.get(keyword))
        if value is not None:
            meta[key] = value
    for keyword, key in _META_INT.items():
        number = _int(ds.get(keyword))
        if number is not None:
            meta[key] = number
    for keyword, key in _META_FLOAT.items():
        numbers = _floats(ds.get(keyword))
        if numbers:
            meta[key] = numbers[0] if len(numbers) == 1 else numbers
    if tsuid.is_transfer_syntax and tsuid.name != str(tsuid):  # a registered, public name
        meta["transfer_syntax"] = tsuid.name
    return meta


# =============================================================================================
# PNG / JPEG
# =============================================================================================
def _load_raster(p: Path, max_pixels: int | None = None) -> LoadedImage:
    """Read a PNG or JPEG through Pillow, refusing decompression bombs.

    Runs in the decoder child (see ``load_image``); ``max_pixels`` is the parent's
    ``Image.MAX_IMAGE_PIXELS``, applied here before the file is opened (None keeps this
    process's own setting).

    ``Image.MAX_IMAGE_PIXELS`` is enforced strictly: above it Pillow only warns (and errors at
    twice the limit); here the warning is an error too. Text chunks and EXIF are not read into
    ``meta`` (they can hold names); EXIF orientation is applied, since photos of films are often
    rotated by it. RGB images whose channels are equal are stored as greyscale.
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
        reason = _one_line(exc)
        raise ImageTooLargeError(f"{p.name}: image is too large to load safely ({reason})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for broken streams
        reason = _one_line(exc)
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


# =============================================================================================
# Shared helpers
# =============================================================================================
# Above this many values the percentiles are taken from an even sample (a window needs two
# numbers, not an exact sort of a 4-megapixel radiograph: that cost 200 ms and 100 MiB).
_PERCENTILE_SAMPLE = 1_000_000


def percentile_window(values: np.ndarray) -> np.ndarray:
    """``uint8`` rendering of grey values windowed to their 0.5-99.5 percentiles.

    Falls back to min-max when the percentiles coincide (mostly-flat images) and to all-zero
    for a constant image. NaN/inf are ignored for the window and shown black. Images above
    ``_PERCENTILE_SAMPLE`` values take the percentiles from an even sample of that size.
    """
    flat = values.ravel()
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLE + 1]
    finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, _PERCENTILE_WINDOW))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    unit = values.astype(np.float32)
    unit -= np.float32(lo)
    unit /= np.float32(hi - lo)
    return _to_uint8(unit)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN -> 0) to uint8 0-255.

    Works in place on a float32 ``unit`` (callers pass a temporary), so that a large image
    costs one float32 copy rather than four float64 ones.
    """
    u = np.asarray(unit, dtype=np.float32)
    np.fmax(u, np.float32(0.0), out=u)  # fmax drops NaN: NaN -> 0, and -inf -> 0
    np.fmin(u, np.float32(1.0), out=u)  # +inf -> 1
    u *= np.float32(255.0)
    np.rint(u, out=u)
    return u.astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    """An exception as a short single line for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _first(seq: Any) -> Any:
    """The first item of a DICOM sequence, or None."""
    try:
        return seq[0] if seq else None
    except (IndexError, TypeError):
        return None


def _values(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued elements are already sequences)."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _int(value: Any) -> int | None:
    """A single integer DICOM value, or None if absent or not an integer."""
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    """A single finite float DICOM value, or None."""
    numbers = _floats(value)
    return numbers[0] if numbers else None


def _floats(value: Any) -> list[float]:
    """All values of a numeric element as finite floats; empty if any value is not one."""
    out: list[float] = []
    for v in _values(value):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return []
        if not math.isfinite(f):
            return []
        out.append(f)
    return out


def _code(value: Any) -> str | list[str] | None:
    """A CS value if every part follows the CS rules, else None (it may hide free text)."""
    parts = [str(v).strip() for v in _values(value)]
    parts = [v for v in parts if v]
    if not parts or not all(_CS.match(v) for v in parts):
        return None
    return parts[0] if len(parts) == 1 else parts


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """Two finite positive floats, or None."""
    numbers = _floats(value)
    if len(numbers) != 2 or min(numbers) <= 0:
        return None
    return numbers[0], numbers[1]


def _fmt_raw(value: Any) -> str:
    """A spacing value for a note, without trusting its contents."""
    parts = [str(v)[:12] for v in _values(value)[:3]]
    return "(" + ", ".join(parts) + ")"
