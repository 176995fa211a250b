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

Sizes run from 3 to 60 mm (nodules to masses: a 50 mm disc at 0.3 mm spacing, 167 px across, is
found), with as many LoG scales as keep their spacing at about 1.39x (eight from 3 to 30 mm).

**Domain.** It was validated on medloop's phantoms only (``LESION_DOMAIN``): on a clinical image
every organ edge and vessel is a blob, so there its detections are reported as bright spots, not
lesion findings, with no assertion, and the tool wrapper flags the evidence out of domain. A
count far beyond what its phantoms hold (0-3 lesions) is flagged as implausible even on a
synthetic image: 76 "lesions" say the detector is out of its domain, not that there are 76.

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
from typing import Literal

import cv2
import numpy as np
from langchain_core.tools import BaseTool
from scipy import ndimage

from tools.base import ImageArgs
from tools.domain import Domain, ImageFacts, flag_evidence
from tools.errors import ToolInputError
from tools.evidence import Assertion, Box, Evidence, Measurement
from tools.image import LoadedImage
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore
from tools.vision.basic import displayed_frame

__all__ = ["LESION_DOMAIN", "PLAUSIBLE_MAX", "TOOLS", "Detection", "LesionReport",
           "detect_lesions", "lesion_evidence", "lesion_tools"]

# LoG scales are spaced by this factor (eight over the former 3-30 mm range), however wide the
# size range: wider ranges get more scales, not coarser ones.
_SCALE_STEP = 10.0 ** (1.0 / 7.0)
_MAX_CANDIDATES = 300
# Lesions up to this diameter (mm) are scanned in one band, as tuned on the phantoms; larger
# ones in a band of their own (``_bands``).
_BAND_MM = 30.0
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


_MIN_FILL = 0.6
"""Least share of its bounding box a lesion fills: a disc or ellipse fills pi/4 (0.785); the
band between two lung fields that a 60 mm scale also picks up filled 0.51."""


def _compact(comp: np.ndarray) -> bool:
    """Whether a component (bool ``(h, w)`` window) is a focal blob.

    It must lie inside the window (not run out of it) and be round enough to fill
    ``_MIN_FILL`` of its bounding box.
    """
    if comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any():
        return False
    ys, xs = np.nonzero(comp)
    box_area = (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)
    return comp.sum() >= _MIN_FILL * box_area


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


@dataclass
class _Scan:
    """One image being scanned: the frame, its noise, and what earlier bands claimed."""

    values: np.ndarray  # (H, W) modality values, bright = dense
    smooth: np.ndarray  # values after a 1 px Gaussian
    noise: float  # pixel noise sd
    per_px: float  # mm per pixel (1 when unknown: sizes in px)
    unit: str
    z_min: float
    min_cnr: float
    side_known: bool
    claimed: np.ndarray  # (H, W) bool: pixels of lesions already found (and a 2 px margin)
    unit_noise: np.ndarray  # (H, W) standard normal, for the LoG response of pure noise


def _band(scan: _Scan, lo_mm: float, hi_mm: float, keep_mm: float,
          ) -> tuple[list[Detection], float]:
    """Lesions found over LoG sizes ``lo_mm``-``hi_mm``, and the strongest rejected blob's z.

    Steps 0-3 of the module docstring over one size band; a lesion is kept when its measured
    diameter is within ``keep_mm``-``hi_mm`` (mm, or px without a spacing).
    """
    values, noise, per_px = scan.values, scan.noise, scan.per_px
    h, w = values.shape
    r_lo = max(lo_mm / 2.0 / per_px, 1.0)
    r_hi = max(hi_mm / 2.0 / per_px, r_lo * 1.5)
    # Background removal: a white top-hat (image minus its grey opening by a disc wider than the
    # largest lesion) keeps bright structures smaller than the disc and flattens edges, organs
    # and gradients, which would otherwise dominate the Laplacian at large scales.
    disc = 2 * math.ceil(1.25 * r_hi) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (disc, disc))
    flat = cv2.morphologyEx(scan.smooth.astype(np.float32), cv2.MORPH_TOPHAT, kernel).astype(
        np.float64)

    # 1. Scale-normalised LoG. The scale is the one with the strongest response (blob radius
    # ≈ σ·√2); its significance is the response over that of white noise of this image's sd
    # at that scale.
    n_scales = max(2, math.ceil(math.log(r_hi / r_lo) / math.log(_SCALE_STEP) - 1e-9) + 1)
    sigmas = np.geomspace(r_lo / math.sqrt(2), r_hi / math.sqrt(2), n_scales)
    best_r = np.full((h, w), -np.inf)
    best_z = np.zeros((h, w))
    best_s = np.zeros((h, w))
    for s in sigmas:
        resp = -(s**2) * ndimage.gaussian_laplace(flat, s)
        spread = noise * float(np.std(-(s**2) * ndimage.gaussian_laplace(scan.unit_noise, s)))
        z = (resp - float(np.median(resp))) / max(spread, 1e-9)
        better = resp > best_r
        best_r[better] = resp[better]
        best_z[better] = z[better]
        best_s[better] = s
    peaks = (best_r == ndimage.maximum_filter(best_r, size=max(3, int(2 * r_lo) | 1)))
    peaks &= best_z >= min(scan.z_min, 3.0)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-best_z[ys, xs])[:_MAX_CANDIDATES]

    detections: list[Detection] = []
    strongest_rejected = 0.0
    for k in order:
        y, x = int(ys[k]), int(xs[k])
        if scan.claimed[y, x]:
            continue
        z = float(best_z[y, x])
        r = float(best_s[y, x]) * math.sqrt(2.0)
        found = _blob(scan, flat, (x, y), r, z, (1.2 * r_hi + 4, keep_mm, hi_mm))
        if isinstance(found, Detection):
            detections.append(found)
        elif found is not None:
            strongest_rejected = max(strongest_rejected, found)
    return detections, strongest_rejected


def _blob(scan: _Scan, flat: np.ndarray, peak: tuple[int, int], r: float, z: float,
          limits: tuple[float, float, float]) -> Detection | float | None:
    """Steps 2-3 for one LoG candidate at pixel ``peak`` (x, y) of radius ``r`` px.

    ``limits``: the radius (px) of the window its component is looked for in, and the least
    and largest diameter kept. Returns the detection (its pixels join ``scan.claimed``); or, for
    a candidate that is not a significant blob, its significance when it passed the blob test
    (0 when not), for the report's score; or None when its half-maximum component is not a
    focal blob of a kept size.
    """
    reach_hi, keep_mm, hi_mm = limits
    (x, y), h, w = peak, *scan.values.shape
    noise, z_min = scan.noise, scan.z_min
    cx, cy = x + 0.5, y + 0.5
    # 2. Blob test against the surrounding ring.
    sy, sx, d2 = _window((h, w), cx, cy, 2.4 * r + 2)
    # On the image itself, not the top-hat: beside an edge, the ring's bright part is the
    # tissue the candidate belongs to.
    in_core = d2 <= max(r * 0.5, 1.0) ** 2
    in_ring = (d2 >= (1.6 * r + 1) ** 2) & (d2 <= (2.4 * r + 2) ** 2)
    if in_core.sum() == 0 or in_ring.sum() < 8:
        return None
    is_blob = _brighter_than_ring(scan.smooth[sy, sx], in_core, in_ring, sx.start, sy.start,
                                  (cx, cy), 3.0 * noise / math.sqrt(in_core.sum()))
    local = flat[sy, sx]
    v, b = float(local[in_core].mean()), float(np.median(local[in_ring]))
    # Conspicuity: a broad, faint swell (a body contour) is significant over many pixels
    # but is not a focal lesion; ask for a contrast of ``min_cnr`` pixel-noise sd.
    is_blob = is_blob and v - b >= scan.min_cnr * noise
    if not is_blob or z < z_min:
        return z if is_blob else 0.0
    # 3. Half-maximum component containing the peak, in a window the largest lesion fits
    # (the LoG's centre and scale are only estimates).
    sy, sx, _ = _window((h, w), cx, cy, max(2.4 * r + 2, reach_hi))
    labels, _ = ndimage.label(flat[sy, sx] >= b + 0.5 * (v - b))
    lab = labels[y - sy.start, x - sx.start]
    if lab == 0:
        return None
    comp = labels == lab
    area = int(comp.sum())
    diameter = 2.0 * math.sqrt(area / math.pi) * scan.per_px
    if not _compact(comp) or not keep_mm <= diameter <= hi_mm:
        return None  # a structure of the wrong size or shape: not a focal lesion
    cys, cxs = np.nonzero(comp)
    box = (int(cxs.min() + sx.start), int(cys.min() + sy.start),
           int(cxs.max() + sx.start + 1), int(cys.max() + sy.start + 1))
    centre = (float(cxs.mean() + sx.start + 0.5), float(cys.mean() + sy.start + 0.5))
    quadrant = (f"{'upper' if centre[1] < h / 2 else 'lower'} "
                f"{'left' if centre[0] < w / 2 else 'right'}")
    side = ("right" if centre[0] < w / 2 else "left") if scan.side_known else None
    full = np.zeros((h, w), dtype=bool)
    full[sy, sx] = comp
    scan.claimed |= ndimage.binary_dilation(full, iterations=2)
    return Detection(
        box=box, center_xy=centre, diameter=round(diameter, 1), unit=scan.unit, area_px=area,
        contrast=v - b, z=z, p_real=_p_real(z, z_min), quadrant=quadrant, patient_side=side,
    )


def _bands(lo_mm: float, hi_mm: float) -> list[tuple[float, float, float]]:
    """Size bands ``(lo, hi, least kept diameter)`` to scan, smallest first.

    Sizes up to ``_BAND_MM`` are scanned as the detector was tuned on its phantoms (keeping
    components from half the least size); larger ones in a band of their own, overlapping by a
    fifth and keeping only components from its lower bound: over one wide band the
    scale-normalised LoG of a large structure swallows the small lesions on it.
    """
    if hi_mm <= _BAND_MM * 1.2:
        return [(lo_mm, hi_mm, lo_mm * 0.5)]
    large_lo = max(lo_mm, 0.8 * _BAND_MM)
    return [(lo_mm, _BAND_MM, lo_mm * 0.5), (large_lo, hi_mm, large_lo)]


def detect_lesions(
    img: LoadedImage,
    *,
    min_diameter_mm: float = 3.0,
    max_diameter_mm: float = 60.0,
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
    sp = float(np.mean(img.spacing_mm)) if img.spacing_mm else None
    scan = _Scan(values=values, smooth=ndimage.gaussian_filter(values, 1.0),
                 noise=_noise_sd(values), per_px=sp or 1.0, unit="mm" if sp else "px",
                 z_min=z_min, min_cnr=min_cnr, side_known=_patient_side_known(img),
                 claimed=np.zeros(values.shape, dtype=bool),
                 unit_noise=np.random.default_rng(0).standard_normal(values.shape))
    detections: list[Detection] = []
    strongest_rejected = 0.0
    for lo, hi, keep in _bands(min_diameter_mm, max_diameter_mm):
        found, rejected = _band(scan, lo, hi, keep)
        detections += found
        strongest_rejected = max(strongest_rejected, rejected)
    detections.sort(key=lambda d: -d.diameter)
    certain = [d.p_real for d in detections] + [1.0 - _p_real(strongest_rejected, z_min)]
    notes = [] if sp else ["pixel spacing unknown: sizes in px"]
    return LesionReport(
        detections=detections,
        noise_sd=scan.noise,
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


PLAUSIBLE_MAX = 5
"""More detections than this are implausible inside the detector's domain: its phantoms hold
0-3 lesions, so a larger count says it is reading texture (organ edges, vessels), not lesions."""

_LISTED = 5
"""Detections itemised (largest first) when they are not lesion findings."""

LESION_DOMAIN = Domain(
    validated_on="medloop's synthetic phantoms only (CT- and radiograph-like, 0-3 round "
                 "lesions of 5-22 mm; 50 mm discs checked)",
    synthetic_only=True, outside="flag",
    why="on clinical images its blobs are organ edges, vessels and bowel (24-79 'lesions' on "
        "VQA-RAD images): run and flagged, not refused, so the spots it saw stay visible, but "
        "they are reported as bright spots, not findings, and assert nothing",
)
"""Where ``detect_lesions`` is valid: medloop's phantoms; any clinical image is outside."""


def _item(d: Detection, i: int, n: int) -> str:
    label = f"L{i} (the largest)" if i == 1 and n > 1 else f"L{i}"
    side = f" (patient's {d.patient_side} side)" if d.patient_side else ""
    return f"{label} in the {d.quadrant} of the image{side}, {d.diameter:g} {d.unit} diameter"


def _summary(rep: LesionReport, findings: bool = True) -> str:
    """One line a small planner can copy from: the count, then each lesion's place and size.

    L1 is the largest and says so ("L1 (the largest)"): asked for the largest size, the 135M
    planner otherwise copied whichever diameter it read last. When the detections are not
    lesion findings (``findings`` false: an image outside the domain, or an implausible count)
    they are called bright spots and only the largest few are listed.
    """
    n = rep.count
    if findings and not rep.detections:
        return (f"No focal lesion found: 0 lesions (strongest candidate "
                f"{rep.strongest_rejected_z:.1f} noise sd, below the {rep.z_min:g} sd threshold).")
    if findings:
        parts = [_item(d, i, n) for i, d in enumerate(rep.detections, 1)]
        return f"{n} focal lesion{'s' if n > 1 else ''} found: " + "; ".join(parts) + "."
    head = (f"{n} bright focal spot{'s' if n != 1 else ''} by blob detection; not lesion "
            "findings (the detector is not validated for this image or count)")
    if not n:
        return head + "."
    listed = [_item(d, i, n) for i, d in enumerate(rep.detections[:_LISTED], 1)]
    more = f" ({_LISTED} of {n} listed)" if n > _LISTED else ""
    return f"{head}: " + "; ".join(listed) + more + "."


def _one_side(rep: LesionReport) -> Literal["left", "right"] | None:
    """The patient's side when every detection is on it; None when mixed or unknown."""
    sides = {d.patient_side for d in rep.detections}
    if sides == {"left"}:
        return "left"
    return "right" if sides == {"right"} else None


def lesion_evidence(rep: LesionReport, image_id: str, *, findings: bool = True) -> Evidence:
    """The report as ``Evidence``: boxes, diameters (mm or px), count and a presence assertion.

    ``findings`` false (the image is outside ``LESION_DOMAIN``: the tool wrapper flags that
    evidence) reports the detections as bright spots with no assertion. A count above
    ``PLAUSIBLE_MAX`` is treated the same way and flagged here: out of domain, score lowered.
    The assertion carries the count, and the patient's side when all lesions are on one.
    """
    implausible = rep.count > PLAUSIBLE_MAX
    as_findings = findings and not implausible
    shown = rep.detections if as_findings else rep.detections[:_LISTED]
    count_name = "lesion_count" if as_findings else "bright_spot_count"
    ms = [Measurement(name=count_name, value=rep.count, unit="lesions" if as_findings else
                      "spots")]
    sp = (rep.spacing_mm, rep.spacing_mm) if rep.spacing_mm else None
    for i, d in enumerate(shown, 1):
        ms.append(Measurement(name=f"L{i}_diameter", value=d.diameter, unit=d.unit,
                              spacing_mm=sp))
    assertions = [Assertion(finding="focal lesion", present=rep.count > 0,
                            probability=round(rep.score, 4), count=rep.count,
                            side=_one_side(rep))] if as_findings else []
    ev = Evidence(
        tool="detect_lesions",
        image_id=image_id,
        summary=_summary(rep, as_findings),
        score=round(rep.score, 4),
        boxes=[Box(xyxy=tuple(float(v) for v in d.box), label=f"L{i}",  # type: ignore[arg-type]
                   score=round(d.p_real, 4))
               for i, d in enumerate(shown, 1)],
        measurements=ms,
        assertions=assertions,
        data={
            "count": rep.count,
            "findings": as_findings,
            "noise_sd": round(rep.noise_sd, 3),
            "strongest_rejected_z": round(rep.strongest_rejected_z, 2),
            "lesions": [{"box": list(d.box), "diameter": d.diameter, "unit": d.unit,
                         "quadrant": d.quadrant, "patient_side": d.patient_side,
                         "z": round(d.z, 2), "p_real": round(d.p_real, 4)}
                        for d in shown],
            "notes": rep.notes,
        },
    )
    if implausible:
        ev = flag_evidence(ev, f"{rep.count} detections are far more than the 0-3 lesions of "
                               "its validation phantoms: texture, not lesions",
                           LESION_DOMAIN.validated_on)
    return ev


def _detect(deps: ToolDeps) -> Callable[[ImageArgs], Evidence]:
    def run(args: ImageArgs) -> Evidence:
        img = deps.store.get(args.image_id)
        inside = LESION_DOMAIN.judge(ImageFacts.of_image(img)).status == "inside"
        return lesion_evidence(detect_lesions(img), args.image_id, findings=inside)

    return run


# Only the image id is asked for: a 135M planner fills optional numbers at random (it sent
# max_diameter_mm=1.5), and the default 3-60 mm range covers nodules to masses.
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
        domain=LESION_DOMAIN,
    ),
)
"""``detect_lesions``: classical blob detection, no model."""


def lesion_tools(store: ImageStore) -> list[BaseTool]:
    """The ``detect_lesions`` tool over images in ``store`` (default size range, 3-60 mm)."""
    return [spec.tool(ToolDeps(store)) for spec in TOOLS]
