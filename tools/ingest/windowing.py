"""Grey values to a ``uint8`` display: CT window presets, the file's VOI LUT, percentiles.

Three ways a grey image becomes something a person (or a vision model) can look at, in the order
the loaders try them:

* ``voi_display``: the file's own VOI LUT or window (PS3.3 C.11.2), the way the acquiring site
  meant the image to be seen;
* ``percentile_window``: the robust fallback, the 0.5-99.5 percentiles of the values;
* ``window``: a named CT reading window (``WINDOW_PRESETS``) or a ``(center, width)`` pair in
  Hounsfield units, for looking at lung, bone or soft tissue on purpose.

Every function returns ``uint8`` 0-255 of its input's shape, with 0 = black; MONOCHROME1
inversion is the caller's (the loaders), since it depends on the file, not on the window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tools.errors import ToolInputError
from tools.ingest.values import as_floats, one_line

__all__ = [
    "WINDOW_PRESETS",
    "percentile_window",
    "to_uint8",
    "voi_display",
    "window",
]

# CT window presets as (center, width) in Hounsfield units: the usual radiology reading windows.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

# The robust fallback window when a file carries no VOI LUT / window: percentiles, so that a few
# extreme pixels (metal, padding, burned-in text) do not flatten the rest of the image.
PERCENTILE_WINDOW = (0.5, 99.5)

# Above this many values the percentiles are taken from an even sample (a window needs two
# numbers, not an exact sort of a 4-megapixel radiograph: that cost 200 ms and 100 MiB).
PERCENTILE_SAMPLE = 1_000_000

_BLANK_NOTE = "the file's display window shows a blank image; a percentile window is shown instead"


def window(hu: np.ndarray, preset: str | tuple[float, float]) -> np.ndarray:
    """CT values in HU -> uint8 grey through a linear window.

    Args:
        hu: any-shape array of Hounsfield units.
        preset: a name from ``WINDOW_PRESETS`` (lung, mediastinum, bone, brain, abdomen; case
            and surrounding spaces ignored) or a ``(center, width)`` pair in HU.

    Returns:
        uint8 array of ``hu``'s shape: ``center - width/2`` and below -> 0, ``center + width/2``
        and above -> 255, linear in between (NaN -> 0). E.g. lung maps -1350 HU -> 0 and
        150 HU -> 255.

    Raises:
        ToolInputError: unknown preset name or a width that is not positive.
    """
    if isinstance(preset, str):
        key = preset.strip().lower()
        if key not in WINDOW_PRESETS:
            raise ToolInputError(
                f"unknown window preset {preset!r}; use one of {', '.join(WINDOW_PRESETS)} "
                "or a (center, width) pair in HU"
            )
        center, width = WINDOW_PRESETS[key]
    else:
        center, width = (float(v) for v in preset)
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise ToolInputError(f"window width must be a positive number of HU, got {width}")
    lo = center - width / 2.0
    unit = (np.asarray(hu, dtype=np.float64) - lo) / width
    unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def percentile_window(values: np.ndarray) -> np.ndarray:
    """``uint8`` rendering of grey values windowed to their 0.5-99.5 percentiles.

    Falls back to min-max when the percentiles coincide (mostly-flat images) and to all-zero
    for a constant image. NaN/inf are ignored for the window and shown black. Images above
    ``PERCENTILE_SAMPLE`` values take the percentiles from an even sample of that size.
    """
    flat = values.ravel()
    if flat.size > PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // PERCENTILE_SAMPLE + 1]
    finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, PERCENTILE_WINDOW))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    unit = values.astype(np.float32)
    unit -= np.float32(lo)
    unit /= np.float32(hi - lo)
    return to_uint8(unit)


def to_uint8(unit: np.ndarray) -> np.ndarray:
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


def voi_display(ds: Any, frame: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """The file's VOI LUT / window applied to one grey frame, as uint8; None without one.

    Args:
        ds: the pydicom dataset the frame came from (its VOI LUT Sequence, Window Center /
            Width and VOI LUT Function are read).
        frame: ``(H, W)`` modality values (after the modality LUT / rescale).
        notes: caveats for the user; a reason is appended when the file's window is unusable
            or shows a blank image, and None is returned so the caller falls back.
    """
    from pydicom.pixels import apply_voi_lut, apply_windowing  # pydicom only when reading DICOM

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
        return _unless_blank(to_uint8(unit), frame, notes)
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
        notes.append(f"the file's display window is unusable ({one_line(exc)}); "
                     "a percentile window is shown instead")
        return None
    if hi == lo:
        return None
    return _unless_blank(to_uint8((out - lo) / (hi - lo)), frame, notes)


def _unless_blank(display: np.ndarray, frame: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """``display``, or None (with a note) when it is flat although the frame is not."""
    if display.min() == display.max() and frame.min() != frame.max():
        notes.append(_BLANK_NOTE)
        return None
    return display


def _linear_window(ds: Any) -> tuple[float, float] | None:
    """The file's first window ``(center, width)`` when it is a plain LINEAR one, else None.

    PS3.3 C.11.2.1.2.1: LINEAR maps ``x`` to ``(x - (c - 0.5)) / (w - 1) + 0.5`` clipped to
    [0, 1] (of the output range). Other functions (LINEAR_EXACT, SIGMOID) and unusable values
    go to pydicom's ``apply_voi_lut``.
    """
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    center, width = as_floats(ds.get("WindowCenter")), as_floats(ds.get("WindowWidth"))
    if function != "LINEAR" or not center or not width or width[0] < 1:
        return None
    return center[0], width[0]
