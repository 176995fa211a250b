"""Measurements on masks, with units: area, diameters, width, and the cardiothoracic ratio.

Every function takes a bool mask ``(H, W)`` in display pixels and the image's ``spacing_mm``
``(row, col)`` (mm per pixel, or None). With a spacing, lengths are in mm and areas in mm²
(a step in x is ``col`` mm, in y ``row`` mm, so anisotropic pixels are handled); without one
they are in px and px², and the result says so in its ``unit``. Lines are ``(x0, y0, x1, y1)``
pixels for drawing.

Projection radiographs: ``ImagerPixelSpacing`` is the spacing at the detector, so sizes are
magnified (typically 5-15 % on a PA chest film); the tool says so in its summary. The
cardiothoracic ratio is a ratio of two widths on the same film, so it needs no spacing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from langchain_core.tools import BaseTool

from tools.base import ImageArgs, make_tool
from tools.errors import ToolInputError
from tools.evidence import Box, Evidence, Measurement
from tools.find import FoundLungs, find_lungs
from tools.image import LoadedImage
from tools.medsam import MedSamPredictor, get_predictor
from tools.store import ImageStore

__all__ = [
    "Axes",
    "CardiothoracicRatio",
    "Quantity",
    "cardiothoracic_ratio",
    "horizontal_extent",
    "mask_area",
    "mask_axes",
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
    half of the lung fields. Widths carry the same unit (mm or px); the ratio has none.
    """

    ratio: float
    thorax: Quantity
    heart: Quantity


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

    Using pixel corners (not centres) makes a disc of radius r measure 2r, not 2r - 1.
    """
    import cv2

    ys, xs = np.nonzero(m)
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
    if left.shape != right.shape:
        raise ToolInputError(f"lung masks differ in shape: {left.shape} vs {right.shape}")
    _, sx, unit = _len_unit(spacing_mm)
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


# =============================================================================================
# Tool wrapper
# =============================================================================================
_MEASURE_LUNGS = (
    "Find and segment both lungs on a frontal chest radiograph and measure them: each lung's "
    "area and the total (mm2, or px2 when the pixel spacing is unknown), and the "
    "cardiothoracic ratio (heart width / thorax width, from the lung borders)."
)


def _m(name: str, q: Quantity, sp: tuple[float, float] | None) -> Measurement:
    return Measurement(name=name, value=round(q.value, 4), unit=q.unit,
                       spacing_mm=sp if q.unit.startswith("mm") else None, line=q.line)


def lung_measurements(found: FoundLungs, spacing_mm: tuple[float, float] | None,
                      ) -> tuple[list[Measurement], CardiothoracicRatio]:
    """Areas of each lung (patient's right first), total, and the CTR, as measurements."""
    sp = spacing_mm
    right, left = found.side("right"), found.side("left")
    ms = []
    for lung in (right, left):
        ms.append(_m(f"{lung.side}_lung_area", mask_area(lung.mask, sp), sp))
    total = mask_area(right.mask | left.mask, sp)
    ms.append(_m("total_lung_area", total, sp))
    image_left, image_right = sorted((right, left), key=lambda lung: lung.box[0])
    ctr = cardiothoracic_ratio(image_left.mask, image_right.mask, sp)
    ms += [
        _m("thorax_width", ctr.thorax, sp),
        _m("heart_width", ctr.heart, sp),
        Measurement(name="cardiothoracic_ratio", value=round(ctr.ratio, 4), unit="ratio"),
    ]
    return ms, ctr


def measure_lungs_evidence(found: FoundLungs, img: LoadedImage, store: ImageStore,
                           image_id: str, elapsed_s: float = 0.0) -> Evidence:
    """Evidence of ``measure_lungs``: areas, CTR with its lines, both boxes and masks."""
    sp = img.spacing_mm
    ms, ctr = lung_measurements(found, sp)
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
    summary = (f"lung areas {size}; cardiothoracic ratio {ctr.ratio:.2f} (heart "
               f"{ctr.heart.value:.0f} {ctr.heart.unit} / thorax {ctr.thorax.value:.0f} "
               f"{ctr.thorax.unit}; approximated from the lung borders, >0.50 on a PA film "
               f"suggests cardiomegaly); {found.side_rule}.")
    keys = [store.put_array(lung.mask.astype(np.uint8)) for lung in found.lungs]
    return Evidence(
        tool="measure_lungs",
        image_id=image_id,
        summary=summary,
        score=float(min(lung.score for lung in found.lungs)),
        boxes=[Box(xyxy=lung.box, label=lung.label, score=lung.score) for lung in found.lungs],
        measurements=ms,
        mask_keys=keys,
        data={"labels": [lung.label for lung in found.lungs], "side_rule": found.side_rule},
        elapsed_s=elapsed_s,
    )


def measure_tools(store: ImageStore,
                  predictor: MedSamPredictor | None = None) -> list[BaseTool]:
    """The ``measure_lungs`` tool over images in ``store``."""

    def measure_lungs_tool(args: ImageArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        found = find_lungs(img.display, predictor or get_predictor(), args.image_id, img.meta)
        return measure_lungs_evidence(found, img, store, args.image_id,
                                      time.perf_counter() - t0)

    return [make_tool(measure_lungs_tool, name="measure_lungs", description=_MEASURE_LUNGS,
                      args_schema=ImageArgs)]

