"""Measurements on masks, with units: area, diameters, width, HU statistics, CTR.

Every function takes a bool mask ``(H, W)`` in display pixels and the image's ``spacing_mm``
``(row, col)`` (mm per pixel, or None). With a spacing, lengths are in mm and areas in mm²
(a step in x is ``col`` mm, in y ``row`` mm, so anisotropic pixels are handled); without one
they are in px and px², and the result says so in its ``unit``. Lines are ``(x0, y0, x1, y1)``
pixels for drawing.

Projection radiographs: ``ImagerPixelSpacing`` is the spacing at the detector, so sizes are
magnified (typically 5-15 % on a PA chest film); the tool says so in its summary. The
cardiothoracic ratio is a ratio of two widths on the same film, so it needs no spacing.

Hounsfield statistics are given only for CT whose pixels the loader rescaled to HU
(``meta["units"] == "HU"``); on any other image a mean of arbitrary units would read as a
tissue density it is not, so they are left out and the summary says why.

Two tools: ``measure`` takes a mask an earlier ``segment`` / ``find`` stored (by the
``mask-...`` key its summary names) and gives its area, long / short axis and, on CT, HU
statistics; ``measure_lungs`` finds the lungs itself and gives their areas and the CTR.

With a chest anatomy model configured (``MEDLOOP_ANATOMY=xrv-pspnet``) ``measure_lungs`` takes
the lungs and the heart from it and the CTR's heart width from the heart mask itself
(``cardiothoracic_ratio_from_heart``); without one, or when the model finds no heart, the heart
width is estimated from the lungs' inner borders (``cardiothoracic_ratio``), and the evidence
says which (``data["ctr_method"]``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import ANY_IMAGE
from tools.errors import ToolInputError
from tools.evidence import Box, Evidence, Measurement
from tools.image import LoadedImage
from tools.models.medsam import Segmenter, get_predictor
from tools.models.registry import configured_anatomy, segmenter_need
from tools.models.select import segmenter_for
from tools.models.xrv import Anatomy, AnatomySegmenter, anatomy_for
from tools.packaged import LUNGS_FINDER
from tools.spec import ModelNeed, ToolSpec, VisionConfig
from tools.store import ImageStore
from tools.vision.find import (
    FRONTAL_CHEST_RADIOGRAPH,
    FoundLungs,
    Lung,
    _side_rule,
    find_lungs,
    largest_component,
)

__all__ = [
    "TOOLS",
    "Axes",
    "CardiothoracicRatio",
    "HuStats",
    "MaskMeasurement",
    "Quantity",
    "cardiothoracic_ratio",
    "cardiothoracic_ratio_from_heart",
    "horizontal_extent",
    "hu_stats",
    "lungs_from_anatomy",
    "mask_area",
    "mask_axes",
    "mask_volume",
    "measure_mask",
    "measure_tools",
]

Line = tuple[float, float, float, float]
# For the heart width, a lung row counts only if it is at least this fraction of that lung's
# widest row (see ``cardiothoracic_ratio``). Half, because LiteMedSAM often leaves out the lower
# medial lung behind the heart or an opacity (on RG1_UNCI both lungs are notched there), and
# a notch reads as a spuriously wide heart; the price is an underestimate when the heart is
# widest in the last rows above the diaphragm.
_MIN_ROW_WIDTH = 0.5


@dataclass(frozen=True)
class Quantity:
    """A value with its unit ("mm", "mm2", "px", "px2"), and a line showing it when it has one."""

    value: float
    unit: str
    line: Line | None = None


@dataclass(frozen=True)
class Axes:
    """Long axis (maximum diameter, Feret) and short axis (breadth perpendicular to it)."""

    long: Quantity
    short: Quantity


@dataclass(frozen=True)
class CardiothoracicRatio:
    """CTR = heart width / thorax width, both horizontal widths on a frontal chest film.

    ``thorax`` is the outer extent of the two lung masks on the row where it is widest;
    ``heart`` is the widest gap between the lungs' inner (mediastinal) borders in the lower
    half of the lung fields (``method`` ``"lung borders"``), or the horizontal extent of a
    heart mask (``"heart mask"``). Widths carry the same unit (mm or px); the ratio has none.
    """

    ratio: float
    thorax: Quantity
    heart: Quantity
    method: str = "lung borders"


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ToolInputError(f"a mask must be 2D (H, W), got shape {m.shape}")
    if not m.any():
        raise ToolInputError("the mask is empty: nothing to measure")
    return m


def _len_unit(spacing_mm: tuple[float, float] | None) -> tuple[float, float, str]:
    """(row mm, col mm, unit): pixels count 1 each way when the spacing is unknown."""
    if spacing_mm is None:
        return 1.0, 1.0, "px"
    return float(spacing_mm[0]), float(spacing_mm[1]), "mm"


def mask_area(mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> Quantity:
    """Area of a bool mask: pixel count x pixel area, in mm² (or px² without a spacing)."""
    m = _check_mask(mask)
    sy, sx, unit = _len_unit(spacing_mm)
    return Quantity(value=float(m.sum()) * sy * sx, unit=f"{unit}2")


def _boundary_points(m: np.ndarray) -> np.ndarray:
    """Corner points ``(N, 2)`` as (x, y) of the mask's convex hull, pixel edges included.

    Using pixel corners (not centres) makes a disc of radius r measure 2r, not 2r - 1. Only the
    mask's edge pixels are used (every hull vertex is a corner of one): on a lung mask of 400k
    pixels that cuts the hull's input a hundredfold.
    """
    import cv2

    inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ys, xs = np.nonzero(m & ~inner.astype(bool))
    corners = np.concatenate([
        np.stack([xs, ys], 1), np.stack([xs + 1, ys], 1),
        np.stack([xs, ys + 1], 1), np.stack([xs + 1, ys + 1], 1),
    ]).astype(np.float32)
    hull = cv2.convexHull(corners)
    return hull.reshape(-1, 2).astype(np.float64)


def mask_axes(mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> Axes:
    """The maximum diameter and the breadth perpendicular to it, in mm (or px).

    The long axis is the largest distance between two points of the mask's convex hull
    (measured in physical units, so anisotropic pixels are weighed correctly); the short axis
    is the extent of the mask across that direction, drawn through the long axis' midpoint.
    """
    m = _check_mask(mask)
    sy, sx, unit = _len_unit(spacing_mm)
    pts = _boundary_points(m)
    phys = pts * np.array([sx, sy])
    d = np.linalg.norm(phys[:, None, :] - phys[None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long_len = float(d[i, j])
    direction = (phys[j] - phys[i]) / max(long_len, 1e-12)
    normal = np.array([-direction[1], direction[0]])
    proj = phys @ normal
    lo, hi = float(proj.min()), float(proj.max())
    mid = (phys[i] + phys[j]) / 2
    offset = float(mid @ normal)
    a = mid + normal * (lo - offset)
    b = mid + normal * (hi - offset)
    to_px = np.array([sx, sy])
    pa, pb = a / to_px, b / to_px
    return Axes(
        long=Quantity(long_len, unit, (pts[i][0], pts[i][1], pts[j][0], pts[j][1])),
        short=Quantity(hi - lo, unit, (float(pa[0]), float(pa[1]), float(pb[0]), float(pb[1]))),
    )


def horizontal_extent(mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> Quantity:
    """The mask's width along x (leftmost to rightmost pixel edge), in mm (or px).

    The line is drawn on the row where the mask is widest (first such row).
    """
    m = _check_mask(mask)
    _, sx, unit = _len_unit(spacing_mm)
    cols = np.nonzero(m.any(axis=0))[0]
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    rows = np.nonzero(m.any(axis=1))[0]
    widths = [(np.nonzero(m[r])[0][-1] - np.nonzero(m[r])[0][0]) for r in rows]
    y = float(rows[int(np.argmax(widths))]) + 0.5
    return Quantity((x1 - x0) * sx, unit, (float(x0), y, float(x1), y))


def _row_edges(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: first and last column of the mask (-1 where the row is empty)."""
    any_row = m.any(axis=1)
    first = np.where(any_row, m.argmax(axis=1), -1)
    last = np.where(any_row, m.shape[1] - 1 - m[:, ::-1].argmax(axis=1), -1)
    return first, last


def cardiothoracic_ratio(
    image_left_lung: np.ndarray,
    image_right_lung: np.ndarray,
    spacing_mm: tuple[float, float] | None = None,
) -> CardiothoracicRatio:
    """Cardiothoracic ratio from the two lung masks of a frontal (PA) chest radiograph.

    A classical approximation of Danzer's CTR from lung segmentations, used because no heart
    segmenter runs offline: the thorax width is the outer extent of the two lungs on the row
    where that is largest (inner rib margin ≈ the lungs' outer border); the heart width is the
    largest horizontal gap between the lungs' inner (mediastinal) borders over the rows of the
    lower half of the lung fields where both lungs are present and each is at least half as
    wide as at its widest (so costophrenic tips and segmentation notches do not count), which
    is where the heart borders are. Masks are bool ``(H, W)``, passed as they lie on the image
    (image-left lung first). Widths are in mm (or px); > 0.5 on a PA film is the usual
    cardiomegaly threshold.
    """
    left, right = _check_mask(image_left_lung), _check_mask(image_right_lung)
    _, sx, unit = _len_unit(spacing_mm)
    thorax, (l_first, l_last, r_first, r_last) = _thorax(left, right, sx, unit)
    both = (l_first >= 0) & (r_first >= 0)
    rows = np.nonzero(both)[0]
    # The lower half of the lung fields: from the middle of their combined height down.
    any_lung = np.nonzero((l_first >= 0) | (r_first >= 0))[0]
    mid = (any_lung[0] + any_lung[-1] + 1) / 2
    # Rows where either lung has thinned to its costophrenic or apical tip are left out: there
    # the inner border swings outward and the "gap" would be lung tip, not heart.
    l_width = np.where(l_first >= 0, l_last - l_first + 1, 0)
    r_width = np.where(r_first >= 0, r_last - r_first + 1, 0)
    full = ((l_width >= _MIN_ROW_WIDTH * l_width.max())
            & (r_width >= _MIN_ROW_WIDTH * r_width.max()))
    lower = rows[(rows >= mid) & full[rows]]
    if lower.size == 0:
        raise ToolInputError("the lungs do not overlap in the lower half; cannot measure a CTR")
    gap = r_first[lower] - (l_last[lower] + 1)
    g = int(np.argmax(gap))
    hy = float(lower[g]) + 0.5
    heart = Quantity(float(gap[g]) * sx, unit,
                     (float(l_last[lower[g]] + 1), hy, float(r_first[lower[g]]), hy))
    return CardiothoracicRatio(ratio=heart.value / thorax.value, thorax=thorax, heart=heart)


def _thorax(left: np.ndarray, right: np.ndarray, sx: float, unit: str
            ) -> tuple[Quantity, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The thorax width (outer lung borders, widest row) and both lungs' row edges."""
    if left.shape != right.shape:
        raise ToolInputError(f"lung masks differ in shape: {left.shape} vs {right.shape}")
    l_first, l_last = _row_edges(left)
    r_first, r_last = _row_edges(right)
    both = (l_first >= 0) & (r_first >= 0)
    if not both.any() or np.median(l_last[both]) >= np.median(r_first[both]):
        raise ToolInputError("the lung masks do not lie side by side; cannot measure a CTR")
    rows = np.nonzero(both)[0]
    outer = r_last[rows] + 1 - l_first[rows]
    k = int(np.argmax(outer))
    ty = float(rows[k]) + 0.5
    thorax = Quantity(float(outer[k]) * sx, unit,
                      (float(l_first[rows[k]]), ty, float(r_last[rows[k]] + 1), ty))
    return thorax, (l_first, l_last, r_first, r_last)


def cardiothoracic_ratio_from_heart(
    heart: np.ndarray,
    image_left_lung: np.ndarray,
    image_right_lung: np.ndarray,
    spacing_mm: tuple[float, float] | None = None,
) -> CardiothoracicRatio:
    """Cardiothoracic ratio from a heart mask and the two lung masks of a frontal film.

    Danzer's CTR as a radiologist measures it: the heart's maximal transverse diameter (its
    leftmost to its rightmost pixel edge, whatever the rows: the right and left heart borders
    bulge furthest at different heights) over the thorax width, the outer extent of the two
    lungs on the row where that is largest (as ``cardiothoracic_ratio``). The heart is its
    mask's largest connected part (a segmenter's stray islands would widen it). Masks are bool
    ``(H, W)`` as they lie on the image (image-left lung first); widths in mm (or px).
    """
    left, right = _check_mask(image_left_lung), _check_mask(image_right_lung)
    core = largest_component(_check_mask(heart))
    if core.shape != left.shape:
        raise ToolInputError(f"the heart mask is {core.shape} but the lungs are {left.shape}")
    _, sx, unit = _len_unit(spacing_mm)
    thorax, _edges = _thorax(left, right, sx, unit)
    heart_width = horizontal_extent(core, spacing_mm)
    return CardiothoracicRatio(ratio=heart_width.value / thorax.value, thorax=thorax,
                               heart=heart_width, method="heart mask")


def lungs_from_anatomy(anat: Anatomy, meta: dict[str, object]) -> FoundLungs | None:
    """The two lungs of an anatomy model's reading, or None when it did not find both.

    Sides come from where each lung lies on the image and the film's orientation (as
    ``find_lungs`` decides them), not from the model's left/right channel names, so a mirrored
    film cannot swap them silently. Each mask is its largest connected part, holes filled;
    its score is the model's mean sigmoid inside it.
    """
    parts = []
    for name in ("Left Lung", "Right Lung"):
        mask = largest_component(anat.masks[name])
        if not mask.any():
            return None
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        parts.append((float(xs.mean()), box, mask, anat.scores[name]))
    parts.sort(key=lambda p: p[0])  # image-left first
    image_left_is_patient_right, rule = _side_rule(meta)
    sides = ("right", "left") if image_left_is_patient_right else ("left", "right")
    lungs = [Lung(side=side, box=box, detector_box=box, mask=mask,
                  score=float(min(max(score, 0.0), 1.0)))
             for side, (_, box, mask, score) in zip(sides, parts, strict=True)]
    lungs.sort(key=lambda lung: lung.side != "right")
    return FoundLungs(lungs=lungs, side_rule=f"{rule}; lungs from the anatomy model")


@dataclass(frozen=True)
class HuStats:
    """Hounsfield-unit statistics of the CT pixels under a mask (all in HU)."""

    n_pixels: int
    mean: float
    std: float
    min: float
    max: float


def hu_stats(values: np.ndarray, mask: np.ndarray) -> HuStats:
    """Mean, standard deviation, minimum and maximum of ``values`` (HU) inside ``mask``.

    ``values`` and ``mask`` have the same shape: ``(H, W)`` or ``(S, H, W)``.
    """
    m = np.asarray(mask).astype(bool)
    if not m.any():
        raise ToolInputError("the mask is empty: nothing to measure")
    if values.shape != m.shape:
        raise ToolInputError(f"mask {m.shape} does not match the image {values.shape}")
    v = np.asarray(values, dtype=np.float64)[m]
    return HuStats(n_pixels=int(v.size), mean=float(v.mean()), std=float(v.std()),
                   min=float(v.min()), max=float(v.max()))


@dataclass(frozen=True)
class MaskMeasurement:
    """What ``measure_mask`` found: size, axes, HU statistics (CT only, else None and why).

    For a 3D mask ``volume`` is set (mm³, or voxels without a full spacing) and ``area`` /
    ``axes`` are those of its largest cross-section, on slice ``slice_index``.
    """

    area: Quantity
    axes: Axes
    hu: HuStats | None
    hu_note: str
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    volume: Quantity | None = None
    slice_index: int | None = None
    slice_spacing_mm: float | None = None


def mask_volume(mask: np.ndarray, spacing_mm: tuple[float, float] | None,
                slice_spacing_mm: float | None) -> Quantity:
    """Volume of a bool ``(S, H, W)`` mask: voxels x row x col x slice spacing, in mm³.

    Without both the in-plane and the slice spacing the volume is a voxel count
    (unit ``voxels``): a volume in mm³ from a guessed spacing would be an invented number.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 3 or not m.any():
        raise ToolInputError(f"a volume mask must be a non-empty (S, H, W) array, got {m.shape}")
    n = float(m.sum())
    if spacing_mm is None or not slice_spacing_mm:
        return Quantity(n, "voxels")
    return Quantity(n * spacing_mm[0] * spacing_mm[1] * float(slice_spacing_mm), "mm3")


def _hu_note(img: LoadedImage) -> tuple[bool, str]:
    modality = str(img.meta.get("modality") or "unknown")
    if modality.upper() == "CT" and img.meta.get("units") == "HU":
        return True, ""
    if modality.upper() == "CT":
        return False, "HU statistics not given: this CT's pixels are not in HU"
    return False, f"HU statistics not given: the image is {modality}, not CT"


def measure_mask(img: LoadedImage, mask: np.ndarray) -> MaskMeasurement:
    """Area, long / short axis and, on CT in HU, HU statistics of ``mask`` on ``img``.

    ``mask`` is bool ``(H, W)`` over ``img.display`` (HU from the displayed frame's modality
    values: the middle slice of a volume, as displayed), or ``(S, H, W)`` over a volume's
    ``pixels`` (volume from ``meta["slice_spacing_mm"]``, HU over every voxel, area and axes
    on the slice where the mask is largest).
    """
    from tools.vision.basic import displayed_frame

    m = np.asarray(mask).astype(bool)
    sp = img.spacing_mm
    use_hu, note = _hu_note(img)
    if m.ndim == 3 and img.display.ndim == 2 and img.pixels.ndim == 3:
        if m.shape != img.pixels.shape:
            raise ToolInputError(f"the mask is {m.shape} but the volume is {img.pixels.shape} "
                                 "(S, H, W): it was made on another image")
        gap = img.meta.get("slice_spacing_mm")
        volume = mask_volume(m, sp, gap)
        k = int(np.argmax(m.sum(axis=(1, 2))))
        hu = hu_stats(img.pixels.astype(np.float64), m) if use_hu else None
        return MaskMeasurement(area=mask_area(m[k], sp), axes=mask_axes(m[k], sp), hu=hu,
                               hu_note=note, spacing_mm=sp,
                               spacing_source=img.spacing_source if sp else None,
                               volume=volume, slice_index=k,
                               slice_spacing_mm=float(gap) if gap else None)
    m = _check_mask(m)
    h, w = img.display.shape[:2]
    if m.shape != (h, w):
        raise ToolInputError(f"the mask is {m.shape[-1]}x{m.shape[-2]} px but the image is "
                             f"{w}x{h} px: it was made on another image")
    hu = hu_stats(displayed_frame(img), m) if use_hu else None
    return MaskMeasurement(area=mask_area(m, sp), axes=mask_axes(m, sp), hu=hu, hu_note=note,
                           spacing_mm=sp, spacing_source=img.spacing_source if sp else None)


# =============================================================================================
# Tool wrapper
# =============================================================================================
_MEASURE_LUNGS = (
    "On a frontal chest radiograph: find and segment both lungs and measure them: each lung's "
    "area and the total (mm2, or px2 when the pixel spacing is unknown), and the "
    "cardiothoracic ratio (CTR: heart width / thorax width, from the lung borders; >0.50 on a PA "
    "film suggests cardiomegaly). Use for heart size or lung size questions on chest X-rays."
)
_MEASURE = (
    "Measure a mask from an earlier 'segment' or 'find' result, given its mask key (e.g. "
    "'mask-1a2b3c4d5e6f', named in that result): area, long and short axis (lesion size, mm "
    "or px), volume for a 3D mask, and on CT the Hounsfield-unit mean/std/min/max inside it "
    "(density: fat, fluid, soft tissue, calcium)."
)


class MeasureArgs(ImageArgs):
    """Arguments of ``measure``."""

    mask_key: str = Field(description="mask key from a segment/find result, e.g. "
                                      "'mask-1a2b3c4d5e6f'")


def mask_measure_evidence(mm: MaskMeasurement, image_id: str, key: str,
                          elapsed_s: float = 0.0) -> Evidence:
    """Evidence of ``measure``: area, axes with their lines, HU statistics when on CT."""
    sp = mm.spacing_mm
    ms = [_m("area", mm.area, sp), _m("long_axis", mm.axes.long, sp),
          _m("short_axis", mm.axes.short, sp)]
    parts = []
    if mm.volume is not None:
        # Lines belong to one slice of the volume; the overlay draws the displayed one, so
        # they are dropped rather than drawn on the wrong slice.
        ms = [m.model_copy(update={"line": None}) for m in ms]
        ms.insert(0, Measurement(name="volume", value=round(mm.volume.value, 4),
                                 unit=mm.volume.unit))
        gap = (f"slice spacing {mm.slice_spacing_mm:.4g} mm" if mm.slice_spacing_mm
               else "slice spacing unknown, so voxels")
        parts.append(f"volume {mm.volume.value:.1f} {mm.volume.unit} ({gap}); largest "
                     f"cross-section on slice {mm.slice_index}")
    parts += [f"area {mm.area.value:.1f} {mm.area.unit}",
             f"long axis {mm.axes.long.value:.1f} {mm.axes.long.unit}",
             f"short axis {mm.axes.short.value:.1f} {mm.axes.short.unit}"]
    if sp is None:
        parts[-1] += " (pixel spacing unknown, so px)"
    else:
        parts[-1] += f" (spacing {sp[0]:.4g}x{sp[1]:.4g} mm from {mm.spacing_source})"
    if mm.hu is not None:
        hu = mm.hu
        ms += [Measurement(name=f"hu_{k}", value=round(float(getattr(hu, k)), 2), unit="HU")
               for k in ("mean", "std", "min", "max")]
        parts.append(f"HU mean {hu.mean:.1f}, std {hu.std:.1f}, min {hu.min:.0f}, "
                     f"max {hu.max:.0f} over {hu.n_pixels} "
                     f"{'voxels' if mm.volume is not None else 'px'}")
    else:
        parts.append(mm.hu_note)
    return Evidence(
        tool="measure", image_id=image_id, summary=f"mask {key}: " + "; ".join(parts) + ".",
        score=1.0, measurements=ms, mask_keys=[key],
        data={"mask_key": key, "spacing_source": mm.spacing_source},
        elapsed_s=elapsed_s,
    )


def _m(name: str, q: Quantity, sp: tuple[float, float] | None) -> Measurement:
    return Measurement(name=name, value=round(q.value, 4), unit=q.unit,
                       spacing_mm=sp if q.unit.startswith("mm") else None, line=q.line)


def lung_measurements(found: FoundLungs, spacing_mm: tuple[float, float] | None,
                      heart: np.ndarray | None = None,
                      ) -> tuple[list[Measurement], CardiothoracicRatio]:
    """Areas of each lung (patient's right first), total, and the CTR, as measurements.

    With a non-empty ``heart`` mask the CTR's heart width is the mask's; else the lung-border
    estimate.
    """
    sp = spacing_mm
    right, left = found.side("right"), found.side("left")
    ms = []
    for lung in (right, left):
        ms.append(_m(f"{lung.side}_lung_area", mask_area(lung.mask, sp), sp))
    total = mask_area(right.mask | left.mask, sp)
    ms.append(_m("total_lung_area", total, sp))
    image_left, image_right = sorted((right, left), key=lambda lung: lung.box[0])
    if heart is not None and heart.any():
        ctr = cardiothoracic_ratio_from_heart(heart, image_left.mask, image_right.mask, sp)
    else:
        ctr = cardiothoracic_ratio(image_left.mask, image_right.mask, sp)
    ms += [
        _m("thorax_width", ctr.thorax, sp),
        _m("heart_width", ctr.heart, sp),
        Measurement(name="cardiothoracic_ratio", value=round(ctr.ratio, 4), unit="ratio"),
    ]
    return ms, ctr


def measure_lungs_evidence(found: FoundLungs, img: LoadedImage, store: ImageStore,
                           image_id: str, elapsed_s: float = 0.0,
                           heart: np.ndarray | None = None, heart_note: str = "") -> Evidence:
    """Evidence of ``measure_lungs``: areas, CTR with its lines, both boxes and masks.

    ``heart``: a heart mask (an anatomy model's) the CTR's heart width is taken from, stored
    with the lungs' masks; ``heart_note`` says why there is none when a model was asked.
    """
    sp = img.spacing_mm
    ms, ctr = lung_measurements(found, sp, heart)
    by = {m.name: m for m in ms}
    unit = by["total_lung_area"].unit
    r, le, tot = (by[k].value for k in ("right_lung_area", "left_lung_area", "total_lung_area"))
    size = f"{r:.0f} {unit} right, {le:.0f} {unit} left, {tot:.0f} {unit} total"
    if sp is None:
        h, w = img.display.shape[:2]
        size += (f" (pixel spacing unknown, so px2; {r / (h * w):.1%} and {le / (h * w):.1%} of "
                 "the image)")
    elif img.spacing_source == "ImagerPixelSpacing":
        size += " (at the detector: magnification not corrected)"
    else:
        size += f" (spacing {sp[0]:.4g}x{sp[1]:.4g} mm from {img.spacing_source})"
    keys = [store.put_array(lung.mask.astype(np.uint8), key=f"mask-{uuid.uuid4().hex[:12]}")
            for lung in found.lungs]
    if ctr.method == "heart mask" and heart is not None:
        heart_key = store.put_array(largest_component(heart).astype(np.uint8),
                                    key=f"mask-{uuid.uuid4().hex[:12]}")
        how = "heart width from the heart mask"
        mask_note = f"mask keys {', '.join(keys)} (right, left), {heart_key} (heart)"
        keys.append(heart_key)
    else:
        how = "approximated from the lung borders"
        if heart_note:
            how += f" ({heart_note})"
        mask_note = f"mask keys {', '.join(keys)} (right, left)"
    summary = (f"lung areas {size}; cardiothoracic ratio {ctr.ratio:.2f} (heart "
               f"{ctr.heart.value:.0f} {ctr.heart.unit} / thorax {ctr.thorax.value:.0f} "
               f"{ctr.thorax.unit}; {how}, >0.50 on a PA film suggests cardiomegaly); "
               f"{found.side_rule}; {mask_note}.")
    return Evidence(
        tool="measure_lungs",
        image_id=image_id,
        summary=summary,
        score=float(min(lung.score for lung in found.lungs)),
        boxes=[Box(xyxy=lung.box, label=lung.label, score=lung.score) for lung in found.lungs],
        measurements=ms,
        mask_keys=keys,
        data={"labels": [lung.label for lung in found.lungs]
                  + (["heart"] if len(keys) > len(found.lungs) else []),
              "side_rule": found.side_rule, "ctr_method": ctr.method,
              **({"ctr_note": heart_note} if heart_note and ctr.method != "heart mask" else {})},
        elapsed_s=elapsed_s,
    )


def _measurer(store: ImageStore) -> Callable[[MeasureArgs], Evidence]:
    def measure_tool(args: MeasureArgs) -> Evidence:
        img = store.get(args.image_id)
        key = args.mask_key.strip()
        mask = store.get_array(key)
        t0 = time.perf_counter()
        mm = measure_mask(img, mask.astype(bool))
        return mask_measure_evidence(mm, args.image_id, key, time.perf_counter() - t0)

    return measure_tool


def _lung_measurer(store: ImageStore, predictor: Segmenter | None,
                   anatomy: AnatomySegmenter | None = None) -> Callable[[ImageArgs], Evidence]:
    def measure_lungs_tool(args: ImageArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        found, heart, note = None, None, ""
        if anatomy is not None:
            anat = anatomy.segment(img, args.image_id)
            heart = anat.masks["Heart"]
            note = "" if heart.any() else "the anatomy model found no heart"
            found = lungs_from_anatomy(anat, img.meta)
            if found is not None and not _side_by_side(found):
                found = None  # not two lungs a CTR can be read from: the lungs finder's
        if found is None:
            found = find_lungs(img.display, predictor or get_predictor(), args.image_id,
                               img.meta)
        return measure_lungs_evidence(found, img, store, args.image_id,
                                      time.perf_counter() - t0, heart, note)

    return measure_lungs_tool


def _side_by_side(found: FoundLungs) -> bool:
    """Whether the two lungs lie side by side, as the CTR's thorax width needs."""
    image_left, image_right = sorted(found.lungs, key=lambda lung: lung.box[0])
    try:
        _thorax(image_left.mask, image_right.mask, 1.0, "px")
    except ToolInputError:
        return False
    return True


def _heart_models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    anatomy = configured_anatomy(config)
    return (*((anatomy,) if anatomy is not None else ()), LUNGS_FINDER, segmenter_need(config))


_MEASURE_LUNGS_HEART = (
    "On a frontal chest radiograph: segment the lungs and the heart and measure them: each "
    "lung's area and the total (mm2, or px2 when the pixel spacing is unknown), and the "
    "cardiothoracic ratio (CTR: heart width from the heart outline / thorax width; >0.50 on a "
    "PA film suggests cardiomegaly). Use for heart size or lung size questions on chest X-rays."
)


TOOLS = (
    ToolSpec(
        name="measure", description=_MEASURE, args=MeasureArgs,
        build=lambda deps: _measurer(deps.store),
        examples=("Measure the segmented mask.",
                  "What is the area and long axis of that mask?",
                  "What is the density in HU inside the outlined region?"),
        domain=ANY_IMAGE,  # geometry of a stored mask; HU statistics only where pixels are HU
    ),
    ToolSpec(
        name="measure_lungs", description=_MEASURE_LUNGS, args=ImageArgs,
        build=lambda deps: _lung_measurer(deps.store, segmenter_for(deps.vision)),
        models=lambda config: (LUNGS_FINDER, segmenter_need(config)),
        examples=("Is the heart enlarged?",
                  "What is the cardiothoracic ratio?",
                  "Is there cardiomegaly on this chest X-ray?",
                  "How big are the lungs?"),
        domain=FRONTAL_CHEST_RADIOGRAPH,
    ),
    # A configured anatomy model (MEDLOOP_ANATOMY=xrv-pspnet) outlines the heart itself.
    ToolSpec(
        name="measure_lungs", description=_MEASURE_LUNGS_HEART, args=ImageArgs,
        variant="heart-mask", precedence=10,
        enabled=lambda deps: deps.vision.anatomy is not None,
        build=lambda deps: _lung_measurer(deps.store, segmenter_for(deps.vision),
                                          anatomy_for(deps.vision)),
        models=_heart_models,
        examples=("Is the heart enlarged?",
                  "What is the cardiothoracic ratio?",
                  "Is there cardiomegaly on this chest X-ray?",
                  "How big are the lungs?"),
        domain=FRONTAL_CHEST_RADIOGRAPH,
    ),
)
"""``measure`` (a stored mask, no model) and ``measure_lungs``: lungs-finder + segmenter, or,
with an anatomy model configured, its lungs and heart mask."""


def measure_tools(store: ImageStore,
                  predictor: Segmenter | None = None) -> list[BaseTool]:
    """The ``measure`` (a stored mask) and ``measure_lungs`` tools over images in ``store``."""
    measure, measure_lungs, _ = TOOLS
    return [measure.bind(_measurer(store), store),
            measure_lungs.bind(_lung_measurer(store, predictor), store)]
