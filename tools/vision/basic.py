"""The basic image tools: what is this image, what is inside a box, how long is a line.

Deterministic observations on the stored pixels, so every result has ``score=1.0``. Each tool is
a pure function over a ``LoadedImage`` that returns a small dataclass (``describe``,
``region_stats``, ``measure_distance``) and a thin wrapper, declared in ``TOOLS``, that fetches
the image from the store and turns the dataclass into ``Evidence``.

Conventions (as everywhere in medloop): coordinates are pixels of the displayed 2D frame, x to
the right and y down; boxes are ``[x0, y0, x1, y1]`` (XYXY, x1/y1 exclusive); ``spacing_mm`` is
``(row, col)``, so a step in x is ``col`` mm and a step in y is ``row`` mm. Intensities are
modality values: Hounsfield units for CT, arbitrary units ("a.u.") otherwise; colour images are
measured on their luma (0.299 R + 0.587 G + 0.114 B).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import ANY_IMAGE
from tools.errors import ToolInputError
from tools.evidence import PIXELS, Box, Evidence, Measurement
from tools.image import LoadedImage
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore

__all__ = [
    "TOOLS",
    "Distance",
    "ImageDescription",
    "IntensityStats",
    "RegionStats",
    "basic_tools",
    "describe",
    "displayed_frame",
    "intensity_stats",
    "measure_distance",
    "region_stats",
]

# CT pixels at or below this are air (outside the body, or padding): the physical definition of
# background where one exists. Elsewhere it is relative: the darkest 5 % of the robust range.
_CT_AIR_HU = -900.0
_BACKGROUND_FRACTION_OF_RANGE = 0.05
# Balances smaller than this (in normalised intensity) are reported as balanced.
_BALANCED = 0.02
_LUMA = np.array([0.299, 0.587, 0.114])
# Whole-object statistics read at most this many values (bounded memory and time).
_MAX_STATS_VALUES = 16_000_000


# =============================================================================================
# Results
# =============================================================================================
@dataclass(frozen=True)
class IntensityStats:
    """Summary statistics of intensities, all in ``unit`` ("HU" or "a.u.")."""

    unit: str
    n_pixels: int
    min: float
    max: float
    mean: float
    std: float
    p1: float
    median: float
    p99: float


@dataclass(frozen=True)
class ImageDescription:
    """What ``describe`` observed about a whole image.

    ``fov_mm`` is ``(width, height)`` in mm, None when the spacing is unknown.
    ``background_fraction`` is the share of the displayed frame that is background (air in CT,
    the darkest end of the range elsewhere), in [0, 1]. ``balance_lr`` / ``balance_tb`` are the
    mean normalised intensity (0 = darkest, 1 = brightest of the robust range, bright = dense)
    of the image-left minus the image-right half, and of the top minus the bottom half, in
    [-1, 1]; "image-left" is the viewer's left, not the patient's.
    """

    modality: str
    body_part: str | None
    view_position: str | None
    width: int
    height: int
    frames: int
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    fov_mm: tuple[float, float] | None
    stats: IntensityStats
    background_fraction: float
    balance_lr: float
    balance_tb: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegionStats:
    """Intensity statistics inside a box of the displayed frame.

    ``box`` is the integer pixel box actually measured, XYXY with x1/y1 exclusive, after
    clipping to the image (``clipped`` says whether that changed it). Sizes are in mm when the
    spacing is known, else None (the pixel sizes are always given).
    """

    box: tuple[int, int, int, int]
    clipped: bool
    stats: IntensityStats
    width_px: int
    height_px: int
    width_mm: float | None
    height_mm: float | None
    area_mm2: float | None


@dataclass(frozen=True)
class Distance:
    """The length of the segment from ``(x0, y0)`` to ``(x1, y1)`` (pixels of the display).

    ``length_mm`` uses the row/column spacing separately, so anisotropic pixels are handled;
    it is None when the spacing is unknown, and ``length_px`` is then the only length.
    """

    points: tuple[float, float, float, float]
    length_px: float
    length_mm: float | None
    spacing_mm: tuple[float, float] | None


# =============================================================================================
# Pure functions
# =============================================================================================
def displayed_frame(img: LoadedImage) -> np.ndarray:
    """The modality values behind ``img.display``, as float64 ``(H, W)``.

    Multi-frame pixels ``(F, H, W)`` / ``(F, H, W, 3)`` give their middle frame (the one the
    loader renders); colour gives its luma. Coordinates of every tool refer to this array.
    """
    px = img.pixels
    colour = img.display.ndim == 3
    if px.ndim == 4 or (px.ndim == 3 and not colour):  # frames first
        px = px[px.shape[0] // 2]
    values = px.astype(np.float64)
    if colour and values.ndim == 3:
        values = values[..., :3] @ _LUMA
    if values.shape != img.display.shape[:2]:
        raise ValueError(f"pixels {img.pixels.shape} do not match display {img.display.shape}")
    return values


def intensity_stats(values: np.ndarray, unit: str) -> IntensityStats:
    """Statistics of the finite values of any array; NaN/inf are left out."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = float("nan")
        return IntensityStats(unit, 0, nan, nan, nan, nan, nan, nan, nan)
    p1, median, p99 = (float(x) for x in np.percentile(v, [1, 50, 99]))
    return IntensityStats(
        unit=unit,
        n_pixels=int(v.size),
        min=float(v.min()),
        max=float(v.max()),
        mean=float(v.mean()),
        std=float(v.std()),
        p1=p1,
        median=median,
        p99=p99,
    )


def describe(img: LoadedImage) -> ImageDescription:
    """Describe a whole image: geometry, spacing, intensities, background and balance.

    Intensity statistics cover every frame (the whole object; an even sample of frames when it
    holds more than 16 M values); background and balance are computed on the displayed frame,
    oriented so that bright means dense (MONOCHROME1 values are negated first).
    """
    unit = _unit(img)
    height, width = img.display.shape[:2]
    frames = _frames(img)
    every = img.pixels
    if frames > 1 and every.size > _MAX_STATS_VALUES:  # long cine / big volume: even sample
        keep = max(1, _MAX_STATS_VALUES // (every.size // frames))
        every = every[np.linspace(0, frames - 1, keep).round().astype(int)]
    all_values = every.astype(np.float64)
    if img.display.ndim == 3:
        all_values = all_values[..., :3] @ _LUMA
    stats = intensity_stats(all_values, unit)

    values = displayed_frame(img)
    oriented = -values if img.meta.get("photometric") == "MONOCHROME1" else values
    lo, hi = _robust_range(oriented)
    if unit == "HU":
        background = values <= _CT_AIR_HU
    else:
        background = oriented <= lo + _BACKGROUND_FRACTION_OF_RANGE * (hi - lo)
    norm = np.clip((oriented - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    half_w, half_h = width // 2, height // 2
    balance_lr = _mean(norm[:, :half_w]) - _mean(norm[:, width - half_w :])
    balance_tb = _mean(norm[:half_h, :]) - _mean(norm[height - half_h :, :])

    sp = img.spacing_mm
    return ImageDescription(
        modality=str(img.meta.get("modality") or "unknown"),
        body_part=_opt_str(img.meta.get("body_part")),
        view_position=_opt_str(img.meta.get("view_position")),
        width=int(width),
        height=int(height),
        frames=frames,
        spacing_mm=sp,
        spacing_source=img.spacing_source,
        fov_mm=(width * sp[1], height * sp[0]) if sp else None,
        stats=stats,
        background_fraction=float(background.mean()) if background.size else 0.0,
        balance_lr=balance_lr,
        balance_tb=balance_tb,
        notes=list(img.notes),
    )


def region_stats(img: LoadedImage, box: Sequence[float]) -> RegionStats:
    """Statistics of the displayed frame inside ``box`` = ``[x0, y0, x1, y1]`` pixels (XYXY).

    Fractional coordinates are widened to whole pixels (floor x0/y0, ceil x1/y1) so the box is
    covered. A box partly outside the image is clipped to it; one entirely outside, empty or
    malformed raises ``ToolInputError`` stating the image size, so the caller can retry.
    """
    values = displayed_frame(img)
    height, width = values.shape
    size = f"the image is {width}x{height} px (x 0..{width}, y 0..{height})"
    x0, y0, x1, y1 = _four_finite(box, "box", size)
    if x1 <= x0 or y1 <= y0:
        raise ToolInputError(f"box {_fmt_list(box)} is empty: need x0 < x1 and y0 < y1; {size}")
    ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    ix1, iy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if ix1 <= ix0 or iy1 <= iy0:
        raise ToolInputError(f"box {_fmt_list(box)} lies outside the image; {size}")
    clipped = (ix0, iy0, ix1, iy1) != (math.floor(x0), math.floor(y0), math.ceil(x1),
                                       math.ceil(y1))
    w_px, h_px = ix1 - ix0, iy1 - iy0
    sp = img.spacing_mm
    return RegionStats(
        box=(ix0, iy0, ix1, iy1),
        clipped=clipped,
        stats=intensity_stats(values[iy0:iy1, ix0:ix1], _unit(img)),
        width_px=w_px,
        height_px=h_px,
        width_mm=w_px * sp[1] if sp else None,
        height_mm=h_px * sp[0] if sp else None,
        area_mm2=w_px * sp[1] * h_px * sp[0] if sp else None,
    )


def measure_distance(img: LoadedImage, points: Sequence[float]) -> Distance:
    """Length of the segment ``[x0, y0, x1, y1]`` (pixels), in mm when the spacing is known.

    Points must lie on the image (0 <= x <= W, 0 <= y <= H) and differ; otherwise
    ``ToolInputError`` says why (with the image size). x steps are scaled by the column
    spacing, y steps by the row spacing.
    """
    height, width = img.display.shape[:2]
    size = f"the image is {width}x{height} px (x 0..{width}, y 0..{height})"
    x0, y0, x1, y1 = _four_finite(points, "points", size)
    for x, y in ((x0, y0), (x1, y1)):
        if not (0 <= x <= width and 0 <= y <= height):
            raise ToolInputError(f"point ({x:g}, {y:g}) is outside the image; {size}")
    if (x0, y0) == (x1, y1):
        # A zero-length "measurement" is a planner mistake, not an observation.
        raise ToolInputError(
            f"the two points are the same ({x0:g}, {y0:g}); give two distinct points"
        )
    dx, dy = x1 - x0, y1 - y0
    sp = img.spacing_mm
    return Distance(
        points=(x0, y0, x1, y1),
        length_px=math.hypot(dx, dy),
        length_mm=math.hypot(dx * sp[1], dy * sp[0]) if sp else None,
        spacing_mm=sp,
    )


# =============================================================================================
# Tool wrappers
# =============================================================================================
class RegionArgs(ImageArgs):
    """Arguments of ``region_stats``."""

    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="pixel box [x0, y0, x1, y1]: x right, y down, x1/y1 exclusive",
    )


class DistanceArgs(ImageArgs):
    """Arguments of ``measure_distance``."""

    points: list[float] = Field(
        min_length=4,
        max_length=4,
        description="the two end points [x0, y0, x1, y1] in pixels: x right, y down",
    )


_DESCRIBE = (
    "Describe an image: modality, body part and view, size in px and frames, pixel spacing "
    "(mm) and field of view (mm) when known, intensity statistics (HU for CT, else a.u.), the "
    "fraction that is background, and the left/right and top/bottom brightness balance."
)
_REGION = (
    "Intensity statistics (mean, sd, median, min, max; HU for CT, else a.u.) inside a pixel box "
    "[x0, y0, x1, y1] of the image, with the box's size in mm (px if spacing is unknown)."
)
_DISTANCE = (
    "Distance between two points [x0, y0, x1, y1] (pixels) of the image, in mm using the "
    "pixel spacing, or in px when the spacing is unknown."
)


def _describe(deps: ToolDeps) -> Callable[[ImageArgs], Evidence]:
    def describe_tool(args: ImageArgs) -> Evidence:
        return _describe_evidence(describe(deps.store.get(args.image_id)), args.image_id)

    return describe_tool


def _region(deps: ToolDeps) -> Callable[[RegionArgs], Evidence]:
    def region_tool(args: RegionArgs) -> Evidence:
        img = deps.store.get(args.image_id)
        return _region_evidence(region_stats(img, args.box), img, args.image_id)

    return region_tool


def _distance(deps: ToolDeps) -> Callable[[DistanceArgs], Evidence]:
    def distance_tool(args: DistanceArgs) -> Evidence:
        img = deps.store.get(args.image_id)
        return _distance_evidence(measure_distance(img, args.points), img, args.image_id)

    return distance_tool


# An unknown image id raises the store's ``ToolInputError``, which the agent hands back to the
# model to retry. None of these runs a model, so each is valid on any image (ANY_IMAGE): pixel
# statistics and distances mean the same on every modality (in HU only where the pixels are).
TOOLS = (
    ToolSpec(
        name="describe_image", description=_DESCRIBE, args=ImageArgs, build=_describe,
        examples=("What does this image show?",
                  "What modality and body part is this?",
                  "What is the pixel spacing of this scan?",
                  "How large is the field of view in mm?",
                  "Is the image mostly dark or bright?"),
        domain=ANY_IMAGE,
    ),
    ToolSpec(
        name="region_stats", description=_REGION, args=RegionArgs, build=_region,
        examples=("What is the mean intensity inside this box?",
                  "What is the average Hounsfield value in the region [x0, y0, x1, y1]?",
                  "How bright is this area compared with the rest?"),
        domain=ANY_IMAGE,
    ),
    ToolSpec(
        name="measure_distance", description=_DISTANCE, args=DistanceArgs, build=_distance,
        examples=("How far apart are these two points?",
                  "What is the distance in mm between (x, y) and (x, y)?"),
        domain=ANY_IMAGE,
    ),
)
"""``describe_image``, ``region_stats`` and ``measure_distance``."""


def basic_tools(store: ImageStore) -> list[BaseTool]:
    """``describe_image``, ``region_stats`` and ``measure_distance`` over images in ``store``."""
    return [spec.tool(ToolDeps(store)) for spec in TOOLS]


def _describe_evidence(d: ImageDescription, image_id: str) -> Evidence:
    """One compact sentence for the planner, the numbers as measurements."""
    s = d.stats
    what = " ".join(x for x in (d.modality, (d.body_part or "").lower(), d.view_position) if x)
    parts = [f"{what}, {d.width}x{d.height} px"]
    if d.frames > 1:
        parts.append(f"{d.frames} frames (frame {d.frames // 2 + 1} shown)")
    if d.spacing_mm and d.fov_mm:
        geom = (f"{d.spacing_mm[1]:.3g}x{d.spacing_mm[0]:.3g} mm/px ({d.spacing_source}), "
                f"field of view {d.fov_mm[0]:.1f}x{d.fov_mm[1]:.1f} mm")
        if d.spacing_source == "ImagerPixelSpacing":
            geom += " at the detector (magnification not corrected)"
        parts.append(geom)
    else:
        parts.append("pixel spacing unknown (sizes in px only)")
    parts.append(f"intensity {_num(s.min)} to {_num(s.max)} {s.unit}, median {_num(s.median)}")
    parts.append(f"background {d.background_fraction:.0%}")
    parts.append(_balance(d.balance_lr, "image-left", "right") + "; "
                 + _balance(d.balance_tb, "top", "bottom"))
    summary = "; ".join(parts) + "."

    sp = d.spacing_mm
    ms = [
        Measurement(name="width", value=d.width, unit="px"),
        Measurement(name="height", value=d.height, unit="px"),
    ]
    if sp and d.fov_mm:
        ms += [
            Measurement(name="row_spacing", value=sp[0], unit="mm", spacing_mm=sp),
            Measurement(name="column_spacing", value=sp[1], unit="mm", spacing_mm=sp),
            Measurement(name="field_of_view_width", value=_r(d.fov_mm[0]), unit="mm",
                        spacing_mm=sp),
            Measurement(name="field_of_view_height", value=_r(d.fov_mm[1]), unit="mm",
                        spacing_mm=sp),
        ]
    ms += _stats_measurements(s, "intensity")
    ms += [
        Measurement(name="background_fraction", value=_r(d.background_fraction), unit="fraction"),
        Measurement(name="balance_left_minus_right", value=_r(d.balance_lr), unit="a.u."),
        Measurement(name="balance_top_minus_bottom", value=_r(d.balance_tb), unit="a.u."),
    ]
    return Evidence(
        tool="describe_image",
        image_id=image_id,
        summary=summary,
        score=1.0,
        measurements=ms,
        data={
            "observes": PIXELS,
            "modality": d.modality,
            "body_part": d.body_part,
            "view_position": d.view_position,
            "frames": d.frames,
            "spacing_source": d.spacing_source,
            "notes": d.notes,
        },
    )


def _region_evidence(r: RegionStats, img: LoadedImage, image_id: str) -> Evidence:
    s = r.stats
    x0, y0, x1, y1 = r.box
    if r.width_mm is not None and r.height_mm is not None and r.area_mm2 is not None:
        size = (f"{r.width_px}x{r.height_px} px = {r.width_mm:.1f}x{r.height_mm:.1f} mm, "
                f"{r.area_mm2:.1f} mm2")
    else:
        size = f"{r.width_px}x{r.height_px} px, pixel spacing unknown so no mm"
    summary = (f"box [{x0}, {y0}, {x1}, {y1}] ({size}): mean {_num(s.mean)} {s.unit}, "
               f"sd {_num(s.std)}, median {_num(s.median)}, range {_num(s.min)} to {_num(s.max)}")
    if r.clipped:
        summary += "; box clipped to the image"
    frames = _frames(img)
    if frames > 1:
        summary += f"; on frame {frames // 2 + 1} of {frames}"
    sp = img.spacing_mm
    ms = _stats_measurements(s, "region")
    if r.width_mm is not None and r.height_mm is not None and r.area_mm2 is not None:
        ms += [
            Measurement(name="region_width", value=_r(r.width_mm), unit="mm", spacing_mm=sp),
            Measurement(name="region_height", value=_r(r.height_mm), unit="mm", spacing_mm=sp),
            Measurement(name="region_area", value=_r(r.area_mm2), unit="mm2", spacing_mm=sp),
        ]
    else:
        ms += [
            Measurement(name="region_width", value=r.width_px, unit="px"),
            Measurement(name="region_height", value=r.height_px, unit="px"),
            Measurement(name="region_area", value=r.width_px * r.height_px, unit="px2"),
        ]
    return Evidence(
        tool="region_stats",
        image_id=image_id,
        summary=summary + ".",
        score=1.0,
        boxes=[Box(xyxy=(x0, y0, x1, y1), label="region")],
        measurements=ms,
        data={"observes": PIXELS},
    )


_DISTANCE_WORDS = ("distance", "length", "long", "far", "apart", "big", "large", "small", "wide",
                   "width", "size", "measure", "measurement", "diameter", "across", "mm", "cm",
                   "px", "pixels")
"""What a distance between given points speaks to (``data["about"]``)."""


def _distance_evidence(d: Distance, img: LoadedImage, image_id: str) -> Evidence:
    x0, y0, x1, y1 = d.points
    ends = f"from ({x0:g}, {y0:g}) to ({x1:g}, {y1:g})"
    if d.length_mm is not None:
        summary = f"distance {d.length_mm:.1f} mm {ends} ({d.length_px:.1f} px)"
        if img.spacing_source == "ImagerPixelSpacing":
            summary += "; at the detector, magnification not corrected"
        m = Measurement(name="distance", value=_r(d.length_mm), unit="mm",
                        spacing_mm=d.spacing_mm, line=d.points)
    else:
        summary = f"distance {d.length_px:.1f} px {ends}; pixel spacing unknown, so no mm"
        m = Measurement(name="distance", value=_r(d.length_px), unit="px", line=d.points)
    # The points are the caller's: the distance answers a question about a distance or a size,
    # nothing else. On a blank picture the small planner measured (1, 2)-(3, 4) and answered
    # where infarcts were from it, at 0.94; an answer citing only evidence about other topics
    # goes back, then abstains (``agent.trust.agreement.speaks_to``).
    return Evidence(tool="measure_distance", image_id=image_id, summary=summary + ".",
                    score=1.0, measurements=[m], data={"about": list(_DISTANCE_WORDS)})


# =============================================================================================
# Helpers
# =============================================================================================
def _unit(img: LoadedImage) -> str:
    """HU when the loader says so (CT with rescale applied), else arbitrary units."""
    return "HU" if img.meta.get("units") == "HU" else "a.u."


def _frames(img: LoadedImage) -> int:
    """Number of frames: frames-first pixels have one more axis than the display."""
    return int(img.pixels.shape[0]) if img.pixels.ndim > img.display.ndim else 1


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile range of the finite values (min-max if that collapses)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 0.0
    lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    return lo, hi


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else 0.0


def _four_finite(values: Sequence[float], what: str, size: str) -> tuple[float, ...]:
    """Four finite numbers, or a ``ToolInputError`` the model can act on."""
    nums = [float(v) for v in values]
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ToolInputError(f"{what} must be four finite numbers [x0, y0, x1, y1]; {size}")
    return tuple(nums)


def _balance(diff: float, first: str, second: str) -> str:
    if abs(diff) < _BALANCED:
        return f"{first}/{second} balanced"
    word = "brighter" if diff > 0 else "darker"
    return f"{first} half {abs(diff):.2f} {word} than {second}"


def _stats_measurements(s: IntensityStats, prefix: str) -> list[Measurement]:
    return [
        Measurement(name=f"{prefix}_{k}", value=_r(getattr(s, k)), unit=s.unit)
        for k in ("min", "max", "mean", "std", "p1", "median", "p99")
    ]


def _num(v: float) -> str:
    """A value for a summary: whole numbers when large, a few digits when small."""
    if not math.isfinite(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


def _r(v: float) -> float:
    """Round for evidence: enough digits for mm and HU, short enough for the state."""
    return round(float(v), 4)


def _opt_str(v: object) -> str | None:
    return str(v) if v else None


def _fmt_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"
