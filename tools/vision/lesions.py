"""Focal-lesion detection: bright compact blobs, found by scale-normalised LoG and measured.

A classical detector on the displayed frame (bright = dense; MONOCHROME1 is negated first):

0. **Background** — a white top-hat (the image minus its grey opening by a disc wider than the
   largest lesion) keeps bright structures smaller than the disc and flattens organs, body
   contours and gradients.
1. **Candidates** — the scale-normalised Laplacian of Gaussian ``-σ² ∇²G_σ * I`` of the top-hat
   over sizes from ``min_diameter_mm`` to ``max_diameter_mm``; each pixel keeps the scale of its
   strongest response, whose significance ``z`` is measured in units of the response white
   noise of this image's noise sd (estimated from neighbour differences) would give. Local
   maxima are candidates; those at or above ``z_min`` may become detections.
2. **Blob test** — a lesion is brighter than its whole surrounding ring; the bright side of an
   edge is not, since part of its ring is the tissue it belongs to. The core must exceed a plane
   fitted to the ring (absorbing a gradient) by more than the ring's 90th-percentile residual,
   and the raw ring's 75th percentile, and stand ``min_cnr`` pixel-noise sd above the local
   background (a faint broad swell is not focal).
3. **Measurement** — the connected component of the top-hat above half-way between the ring's
   median and the core (half maximum) is the lesion, unless it runs out of a window the largest
   lesion fits in: its box (XYXY pixels) and equivalent diameter ``2·sqrt(area/π)`` in mm.

Each detection gets a probability of being real from its significance (logistic around
``z_min``); the evidence's ``score`` is how sure the count is: the least certain detection, and
one minus the chance that the strongest rejected blob was real. Orientation: quadrants are of
the image; the patient's side is given where the display convention is known (axial CT/MR and
frontal radiographs put the patient's right on the image's left). Measured on the phantom suite
(``agent/evaluation/phantoms.py``, 60 items of seed 1): count right on 90 %, diameter error
0.1 mm mean when the count is right, 0.1–0.2 s per 192² image on one busy core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from langchain_core.tools import BaseTool
from scipy import ndimage

from tools.base import ImageArgs
from tools.errors import ToolInputError
from tools.evidence import Assertion, Box, Evidence, Measurement
from tools.image import LoadedImage
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore
from tools.vision.basic import displayed_frame

__all__ = ["TOOLS", "Detection", "LesionReport", "detect_lesions", "lesion_tools"]

_N_SCALES = 8
_MAX_CANDIDATES = 300
# The logistic slope of "is this detection real" per unit of LoG significance (noise sd).
_P_SLOPE = 1.2


@dataclass(frozen=True)
class Detection:
    """One detected lesion.

    ``box`` is XYXY pixels (x1/y1 exclusive); ``center_xy`` pixels; ``diameter_mm`` the
    equivalent-circle diameter (pixels when the spacing is unknown: ``unit`` says which);
    ``contrast`` the core minus the local background (modality units); ``z`` the LoG
    significance in noise sd; ``p_real`` the probability it is a real lesion.
    """

    box: tuple[int, int, int, int]
    center_xy: tuple[float, float]
    diameter: float
    unit: str
    area_px: int
    contrast: float
    z: float
    p_real: float
    quadrant: str
    patient_side: str | None


@dataclass(frozen=True)
class LesionReport:
    """What ``detect_lesions`` found: detections by decreasing size, and the evidence for it."""

    detections: list[Detection]
    noise_sd: float
    strongest_rejected_z: float
    z_min: float
    spacing_mm: float | None
    score: float
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of lesions found."""
        return len(self.detections)


def _p_real(z: float, z_min: float) -> float:
    return 1.0 / (1.0 + math.exp(-_P_SLOPE * (z - z_min)))


def _noise_sd(values: np.ndarray) -> float:
    """Pixel noise sd from neighbour differences (robust: edges are a small share of pairs)."""
    d = np.diff(values, axis=1).ravel()
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / math.sqrt(2.0), 1e-6)


def _patient_side_known(img: LoadedImage) -> bool:
    modality = str(img.meta.get("modality") or "").upper()
    view = str(img.meta.get("view_position") or "").upper()
    return modality in ("CT", "MR") or (modality in ("CR", "DX") and view in ("PA", "AP"))


def _window(shape: tuple[int, int], cx: float, cy: float, r_out: float,
            ) -> tuple[slice, slice, np.ndarray]:
    """A window of radius ``r_out`` around ``(cx, cy)`` and squared distances to it (px²)."""
    h, w = shape
    x0, x1 = max(0, int(cx - r_out) - 1), min(w, int(cx + r_out) + 2)
    y0, y1 = max(0, int(cy - r_out) - 1), min(h, int(cy + r_out) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2
    return slice(y0, y1), slice(x0, x1), d2


def _brighter_than_ring(
    local: np.ndarray, in_core: np.ndarray, in_ring: np.ndarray, x0: int, y0: int,
    centre: tuple[float, float], margin: float,
) -> bool:
    """Whether the core stands above its whole ring, after removing the ring's linear trend.

    A plane fitted to the ring (least squares) absorbs a smooth background gradient; the core's
    mean must then exceed the plane at the centre by more than the ring's 90th-percentile
    residual plus ``margin``, and the ring's raw 75th percentile by ``margin``.
    """
    yy, xx = np.nonzero(in_ring)
    a = np.column_stack([xx + x0 + 0.5 - centre[0], yy + y0 + 0.5 - centre[1],
                         np.ones(xx.size)])
    ring = local[in_ring]
    coef, *_ = np.linalg.lstsq(a, ring, rcond=None)
    resid = ring - a @ coef
    core = float(local[in_core].mean())
    # Also above three quarters of the ring as it is: beside an edge, half the ring is the very
    # tissue the candidate sits on, and a plane can absorb a step.
    return (core - float(coef[2]) > float(np.percentile(resid, 90)) + margin
            and core - float(np.percentile(ring, 75)) > margin)


def detect_lesions(
    img: LoadedImage,
    *,
    min_diameter_mm: float = 3.0,
    max_diameter_mm: float = 30.0,
    z_min: float = 6.0,
    min_cnr: float = 1.5,
) -> LesionReport:
    """Find bright focal lesions in the displayed frame of ``img``.

    Sizes are in mm when the image has a pixel spacing; without one, the size range is read as
    pixels and diameters are reported in px. Raises ``ToolInputError`` for a size range that is
    empty or not positive.
    """
    if not (0 < min_diameter_mm < max_diameter_mm):
        raise ToolInputError(
            f"need 0 < min_diameter_mm < max_diameter_mm, got {min_diameter_mm:g} and "
            f"{max_diameter_mm:g}"
        )
    values = displayed_frame(img)
    if img.meta.get("photometric") == "MONOCHROME1":
        values = -values
    values = np.where(np.isfinite(values), values, np.nanmedian(values))
    h, w = values.shape
    sp = float(np.mean(img.spacing_mm)) if img.spacing_mm else None
    per_px = sp or 1.0
    unit = "mm" if sp else "px"
    r_lo = max(min_diameter_mm / 2.0 / per_px, 1.0)
    r_hi = max(max_diameter_mm / 2.0 / per_px, r_lo * 1.5)
    noise = _noise_sd(values)
    # Background removal: a white top-hat (image minus its grey opening by a disc wider than the
    # largest lesion) keeps bright structures smaller than the disc and flattens edges, organs
    # and gradients, which would otherwise dominate the Laplacian at large scales.
    disc = 2 * math.ceil(1.25 * r_hi) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (disc, disc))
    smooth = ndimage.gaussian_filter(values, 1.0)
    flat = cv2.morphologyEx(smooth.astype(np.float32), cv2.MORPH_TOPHAT, kernel).astype(
        np.float64)

    # 1. Scale-normalised LoG. The scale is the one with the strongest response (blob radius
    # ≈ σ·√2); its significance is the response over that of white noise of this image's sd
    # at that scale.
    sigmas = np.geomspace(r_lo / math.sqrt(2), r_hi / math.sqrt(2), _N_SCALES)
    unit_noise = np.random.default_rng(0).standard_normal((h, w))
    best_r = np.full((h, w), -np.inf)
    best_z = np.zeros((h, w))
    best_s = np.zeros((h, w))
    for s in sigmas:
        resp = -(s**2) * ndimage.gaussian_laplace(flat, s)
        spread = noise * float(np.std(-(s**2) * ndimage.gaussian_laplace(unit_noise, s)))
        z = (resp - float(np.median(resp))) / max(spread, 1e-9)
        better = resp > best_r
        best_r[better] = resp[better]
        best_z[better] = z[better]
        best_s[better] = s
    peaks = (best_r == ndimage.maximum_filter(best_r, size=max(3, int(2 * r_lo) | 1)))
    peaks &= best_z >= min(z_min, 3.0)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-best_z[ys, xs])[:_MAX_CANDIDATES]

    detections: list[Detection] = []
    claimed = np.zeros((h, w), dtype=bool)
    strongest_rejected = 0.0
    side_known = _patient_side_known(img)
    for k in order:
        y, x = int(ys[k]), int(xs[k])
        z = float(best_z[y, x])
        if claimed[y, x]:
            continue
        r = float(best_s[y, x]) * math.sqrt(2.0)
        cx, cy = x + 0.5, y + 0.5
        # 2. Blob test against the surrounding ring.
        sy, sx, d2 = _window((h, w), cx, cy, 2.4 * r + 2)
        # On the image itself, not the top-hat: beside an edge, the ring's bright part is the
        # tissue the candidate belongs to.
        in_core = d2 <= max(r * 0.5, 1.0) ** 2
        in_ring = (d2 >= (1.6 * r + 1) ** 2) & (d2 <= (2.4 * r + 2) ** 2)
        if in_core.sum() == 0 or in_ring.sum() < 8:
            continue
        is_blob = _brighter_than_ring(smooth[sy, sx], in_core, in_ring, sx.start, sy.start,
                                      (cx, cy), 3.0 * noise / math.sqrt(in_core.sum()))
        local = flat[sy, sx]
        v, b = float(local[in_core].mean()), float(np.median(local[in_ring]))
        # Conspicuity: a broad, faint swell (a body contour) is significant over many pixels
        # but is not a focal lesion; ask for a contrast of ``min_cnr`` pixel-noise sd.
        is_blob = is_blob and v - b >= min_cnr * noise
        if not is_blob or z < z_min:
            strongest_rejected = max(strongest_rejected, z if is_blob else 0.0)
            continue
        # 3. Half-maximum component containing the peak, in a window the largest lesion fits
        # (the LoG's centre and scale are only estimates).
        reach = max(2.4 * r + 2, 1.2 * r_hi + 4)
        sy, sx, _ = _window((h, w), cx, cy, reach)
        local = flat[sy, sx]
        comp_mask = local >= b + 0.5 * (v - b)
        labels, _ = ndimage.label(comp_mask)
        lab = labels[y - sy.start, x - sx.start]
        if lab == 0:
            continue
        comp = labels == lab
        touches = comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any()
        area = int(comp.sum())
        diameter = 2.0 * math.sqrt(area / math.pi) * per_px
        if touches or diameter > max_diameter_mm or diameter < min_diameter_mm * 0.5:
            continue  # a structure of the wrong size or shape: not a focal lesion
        cys, cxs = np.nonzero(comp)
        box = (int(cxs.min() + sx.start), int(cys.min() + sy.start),
               int(cxs.max() + sx.start + 1), int(cys.max() + sy.start + 1))
        full = np.zeros((h, w), dtype=bool)
        full[sy, sx] = comp
        claimed |= ndimage.binary_dilation(full, iterations=2)
        centre = (float(cxs.mean() + sx.start + 0.5), float(cys.mean() + sy.start + 0.5))
        quadrant = (f"{'upper' if centre[1] < h / 2 else 'lower'} "
                    f"{'left' if centre[0] < w / 2 else 'right'}")
        side = ("right" if centre[0] < w / 2 else "left") if side_known else None
        detections.append(Detection(
            box=box, center_xy=centre, diameter=round(diameter, 1), unit=unit, area_px=area,
            contrast=v - b, z=z, p_real=_p_real(z, z_min), quadrant=quadrant,
            patient_side=side,
        ))
    detections.sort(key=lambda d: -d.diameter)
    certain = [d.p_real for d in detections] + [1.0 - _p_real(strongest_rejected, z_min)]
    notes = [] if sp else ["pixel spacing unknown: sizes in px"]
    return LesionReport(
        detections=detections,
        noise_sd=noise,
        strongest_rejected_z=strongest_rejected,
        z_min=z_min,
        spacing_mm=sp,
        score=float(min(certain)),
        notes=notes,
    )


_DESCRIPTION = (
    "Find focal lesions (nodules, masses: bright round spots) in an image. Gives how many "
    "lesions there are, where each one is (image quadrant, patient side) and its diameter in mm. "
    "Use it for questions about a lesion, nodule or mass: is there one, how many, where, how big."
)


def _summary(rep: LesionReport) -> str:
    """One line a small planner can copy from: the count, then each lesion's place and size.

    L1 is the largest and says so ("L1 (the largest)"): asked for the largest size, the 135M
    planner otherwise copied whichever diameter it read last.
    """
    if not rep.detections:
        return (f"No focal lesion found: 0 lesions (strongest candidate "
                f"{rep.strongest_rejected_z:.1f} noise sd, below the {rep.z_min:g} sd threshold).")
    n = rep.count
    parts = []
    for i, d in enumerate(rep.detections, 1):
        label = f"L{i} (the largest)" if i == 1 and n > 1 else f"L{i}"
        side = f" (patient's {d.patient_side} side)" if d.patient_side else ""
        parts.append(f"{label} in the {d.quadrant} of the image{side}, "
                     f"{d.diameter:g} {d.unit} diameter")
    return f"{n} focal lesion{'s' if n > 1 else ''} found: " + "; ".join(parts) + "."


def lesion_evidence(rep: LesionReport, image_id: str) -> Evidence:
    """The report as ``Evidence``: boxes, diameters (mm or px), count and a presence assertion."""
    ms = [Measurement(name="lesion_count", value=rep.count, unit="lesions")]
    sp = (rep.spacing_mm, rep.spacing_mm) if rep.spacing_mm else None
    for i, d in enumerate(rep.detections, 1):
        ms.append(Measurement(name=f"L{i}_diameter", value=d.diameter, unit=d.unit,
                              spacing_mm=sp))
    return Evidence(
        tool="detect_lesions",
        image_id=image_id,
        summary=_summary(rep),
        score=round(rep.score, 4),
        boxes=[Box(xyxy=tuple(float(v) for v in d.box), label=f"L{i}",  # type: ignore[arg-type]
                   score=round(d.p_real, 4))
               for i, d in enumerate(rep.detections, 1)],
        measurements=ms,
        assertions=[Assertion(finding="focal lesion", present=rep.count > 0,
                              probability=round(rep.score, 4))],
        data={
            "count": rep.count,
            "noise_sd": round(rep.noise_sd, 3),
            "strongest_rejected_z": round(rep.strongest_rejected_z, 2),
            "lesions": [{"box": list(d.box), "diameter": d.diameter, "unit": d.unit,
                         "quadrant": d.quadrant, "patient_side": d.patient_side,
                         "z": round(d.z, 2), "p_real": round(d.p_real, 4)}
                        for d in rep.detections],
            "notes": rep.notes,
        },
    )


def _detect(deps: ToolDeps) -> Callable[[ImageArgs], Evidence]:
    def run(args: ImageArgs) -> Evidence:
        return lesion_evidence(detect_lesions(deps.store.get(args.image_id)), args.image_id)

    return run


# Only the image id is asked for: a 135M planner fills optional numbers at random (it sent
# max_diameter_mm=1.5), and the default 3–30 mm range covers nodules to small masses.
TOOLS = (
    ToolSpec(
        name="detect_lesions", description=_DESCRIPTION, args=ImageArgs, build=_detect,
        examples=("Is there a lesion in this image?",
                  "Is there a nodule?",
                  "Are there any masses in this scan?",
                  "How many nodules can you see?",
                  "How big is the mass in millimetres?",
                  "Where is the nodule?",
                  "Which side of the patient is the mass on?",
                  "Is the spot in the right or the left half?",
                  "Is there a bright round opacity?"),
    ),
)
"""``detect_lesions``: classical blob detection, no model."""


def lesion_tools(store: ImageStore) -> list[BaseTool]:
    """The ``detect_lesions`` tool over images in ``store`` (default size range, 3–30 mm)."""
    return [spec.tool(ToolDeps(store)) for spec in TOOLS]
