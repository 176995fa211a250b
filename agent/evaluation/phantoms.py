"""Ground-truth phantoms: synthetic radiograph- and CT-like images with lesions we placed.

Public VQA sets cannot be shipped, and their answers cannot be checked against pixels. A phantom
can: every lesion here is a disc of known centre, diameter (mm) and contrast, drawn at a known
pixel spacing, so presence, count, location, size and laterality have exact answers, and the
lesion masks and boxes give grounding IoU and measurement error.

Conventions: images are ``(H, W)`` float32; centres ``(x, y)`` and boxes ``[x0, y0, x1, y1]`` are
pixels (XYXY, x right, y down, x1/y1 exclusive); ``spacing_mm`` is ``(row, col)`` mm per pixel
and isotropic here. Both phantom kinds are displayed in radiological convention (a frontal
radiograph viewed PA, an axial CT slice viewed from the feet): the patient's right is on the
image's left. CT values are Hounsfield units; radiograph values arbitrary units (bright = dense).

Everything is a pure function of a seed: ``phantom_suite(n, seed)`` returns the same items on
every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from tools.image import LoadedImage

__all__ = [
    "QUESTION_KINDS",
    "Lesion",
    "Phantom",
    "PhantomItem",
    "equivalent_diameter_mm",
    "make_phantom",
    "phantom_suite",
    "quadrant_of",
    "side_of",
]

Kind = Literal["radiograph", "ct"]
QuestionKind = Literal["presence", "count", "size", "location", "laterality"]
QUESTION_KINDS: tuple[QuestionKind, ...] = ("presence", "count", "size", "location", "laterality")

# Lesion diameters drawn from this range (mm): from a small nodule to a mass.
_DIAMETER_MM = (5.0, 22.0)
# Lesion contrast in units of the image noise sd. The low end is near what a detector can see,
# so some items are genuinely hard and a confidence has something to be right about.
_CNR = (2.5, 9.0)


@dataclass(frozen=True)
class Lesion:
    """One disc-shaped lesion: centre ``(x, y)`` in pixels, diameter in mm, contrast."""

    center_xy: tuple[float, float]
    diameter_mm: float
    contrast: float  # added intensity (HU or a.u.)
    cnr: float  # contrast / noise sd

    def radius_px(self, spacing_mm: float) -> float:
        """Radius in pixels at an isotropic ``spacing_mm``."""
        return self.diameter_mm / 2.0 / spacing_mm

    def box(self, spacing_mm: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The tight XYXY pixel box of the lesion's mask (x1/y1 exclusive)."""
        mask = self.mask(spacing_mm, shape)
        ys, xs = np.nonzero(mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def mask(self, spacing_mm: float, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(H, W)`` mask: pixel centres within the radius."""
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy = self.center_xy
        r = self.radius_px(spacing_mm)
        return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


@dataclass
class Phantom:
    """A generated image and the truth about it."""

    kind: Kind
    image: LoadedImage
    lesions: list[Lesion]
    spacing_mm: float
    noise_sd: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        h, w = self.image.pixels.shape[:2]
        return int(h), int(w)

    def masks(self) -> list[np.ndarray]:
        """One boolean mask per lesion, in the order of ``lesions``."""
        return [les.mask(self.spacing_mm, self.shape) for les in self.lesions]

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """One XYXY pixel box per lesion."""
        return [les.box(self.spacing_mm, self.shape) for les in self.lesions]


@dataclass
class PhantomItem:
    """A question about a phantom with its ground-truth answer.

    ``answer_type`` says how an answer is graded: ``yesno``, ``count`` (an integer), ``number``
    (mm, right within ``tolerance_mm``) or ``choice`` (one of ``options``). ``boxes`` are the
    ground-truth boxes the answer should be grounded in (XYXY pixels); ``value_mm`` the true size
    for measurement error.
    """

    id: str
    question: str
    answer: str
    answer_type: Literal["yesno", "count", "number", "choice"]
    phantom: Phantom
    question_kind: QuestionKind
    options: list[str] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    value_mm: float | None = None
    tolerance_mm: float | None = None


def quadrant_of(center_xy: tuple[float, float], shape: tuple[int, int]) -> str:
    """``upper left`` / ``upper right`` / ``lower left`` / ``lower right`` (image halves)."""
    h, w = shape
    x, y = center_xy
    return f"{'upper' if y < h / 2 else 'lower'} {'left' if x < w / 2 else 'right'}"


def side_of(center_xy: tuple[float, float], shape: tuple[int, int]) -> str:
    """The patient's side, ``right`` or ``left``: radiological convention puts it image-left."""
    return "right" if center_xy[0] < shape[1] / 2 else "left"


def _body(kind: Kind, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth background and the region where lesions may sit (boolean)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2 + rng.uniform(-4, 4), w / 2 + rng.uniform(-4, 4)
    ry, rx = h * rng.uniform(0.40, 0.46), w * rng.uniform(0.40, 0.46)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == "ct":
        # Soft tissue at ~40 HU in air; a gentle gradient so a plain threshold is not enough.
        base = np.where(inside, 40.0 + 15.0 * (yy - cy) / ry, -1000.0)
    else:
        # A radiograph: a body of slowly varying density (a broad brighter middle), darker
        # outside; values in arbitrary detector units.
        mid = np.exp(-(((xx - cx) / (0.45 * w)) ** 2))
        base = np.where(inside, 900.0 + 150.0 * mid + 60.0 * (yy - cy) / ry, 200.0)
    base = ndimage.gaussian_filter(base, 2.0)
    allowed = ndimage.binary_erosion(inside, iterations=max(4, h // 16))
    return base, allowed


def make_phantom(
    seed: int,
    *,
    kind: Kind = "ct",
    n_lesions: int = 1,
    size: int = 192,
    spacing_mm: float | None = None,
    diameter_mm: tuple[float, float] = _DIAMETER_MM,
    cnr: tuple[float, float] = _CNR,
) -> Phantom:
    """A ``size``x``size`` phantom with ``n_lesions`` non-overlapping bright disc lesions.

    Lesion diameters (mm) and contrast-to-noise ratios are drawn uniformly from the given
    ranges; spacing (mm/px) from 0.6–1.0 unless given. Raises ValueError when the lesions do not
    fit.
    """
    rng = np.random.default_rng(seed)
    sp = float(spacing_mm if spacing_mm is not None else round(rng.uniform(0.6, 1.0), 3))
    h = w = int(size)
    base, allowed = _body(kind, h, w, rng)
    noise_sd = float(rng.uniform(8.0, 14.0) if kind == "ct" else rng.uniform(20.0, 35.0))
    lesions: list[Lesion] = []
    taken = np.zeros((h, w), dtype=bool)
    for _ in range(n_lesions):
        for _attempt in range(200):
            d = float(round(rng.uniform(*diameter_mm), 1))
            r = d / 2 / sp
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            # Keep clear of the image's midlines so quadrant and side are unambiguous.
            if abs(cx - w / 2) < r + 3 or abs(cy - h / 2) < r + 3:
                continue
            c = float(rng.uniform(*cnr))
            les = Lesion(center_xy=(cx, cy), diameter_mm=d, contrast=c * noise_sd, cnr=c)
            m = les.mask(sp, (h, w))
            grown = ndimage.binary_dilation(m, iterations=int(r) + 4)
            if not allowed[m].all() or (grown & taken).any():
                continue
            taken |= m
            lesions.append(les)
            break
        else:
            raise ValueError(f"could not place {n_lesions} lesions on a {size} px phantom")
    img = base.copy()
    for les in lesions:
        # Slightly soft edges (partial volume), as a real lesion has.
        img += les.contrast * ndimage.gaussian_filter(les.mask(sp, (h, w)).astype(float), 0.7)
    img += rng.normal(0.0, noise_sd, (h, w))
    pixels = img.astype(np.float32)
    if kind == "ct":
        lo, hi = -160.0, 240.0  # a soft-tissue window (W 400, L 40)
        meta = {"modality": "CT", "body_part": "ABDOMEN", "units": "HU", "phantom": True}
    else:
        lo, hi = float(np.percentile(pixels, 0.5)), float(np.percentile(pixels, 99.5))
        meta = {"modality": "DX", "body_part": "CHEST", "view_position": "PA",
                "photometric": "MONOCHROME2", "phantom": True}
    display = np.clip((pixels - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    image = LoadedImage(
        pixels=pixels,
        display=display,
        spacing_mm=(sp, sp),
        spacing_source="PixelSpacing",
        meta=meta,
        source_format="phantom",
    )
    return Phantom(kind=kind, image=image, lesions=lesions, spacing_mm=sp, noise_sd=noise_sd)


def _question(
    kind: QuestionKind, p: Phantom, item_id: str
) -> PhantomItem:
    les = p.lesions
    boxes = p.boxes()
    if kind == "presence":
        return PhantomItem(item_id, "Is there a focal lesion in this image?",
                           "yes" if les else "no", "yesno", p, kind, boxes=boxes)
    if kind == "count":
        return PhantomItem(item_id, "How many focal lesions are in this image?", str(len(les)),
                           "count", p, kind, boxes=boxes)
    if kind == "size":
        i = max(range(len(les)), key=lambda j: les[j].diameter_mm)
        d = les[i].diameter_mm
        return PhantomItem(item_id, "What is the diameter of the largest lesion in mm?",
                           f"{d:g}", "number", p, kind, boxes=[boxes[i]], value_mm=d,
                           tolerance_mm=max(2.0, 0.2 * d))
    if kind == "location":
        return PhantomItem(item_id, "In which quadrant of the image is the lesion?",
                           quadrant_of(les[0].center_xy, p.shape), "choice", p, kind,
                           options=["upper left", "upper right", "lower left", "lower right"],
                           boxes=boxes)
    return PhantomItem(item_id, "Is the lesion on the patient's left or right side?",
                       side_of(les[0].center_xy, p.shape), "choice", p, kind,
                       options=["left", "right"], boxes=boxes)


def phantom_suite(n: int, seed: int = 0, *, size: int = 192) -> list[PhantomItem]:
    """``n`` items cycling through the five question kinds and both image kinds.

    Presence questions are half with no lesion; count questions have 0–3 lesions; size, location
    and laterality questions have exactly one lesion (size: 1–2, the largest is asked). Item ``i``
    depends only on ``(seed, i)``, so a suite's first N items are the same for every n >= N.
    """
    items: list[PhantomItem] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        qkind = QUESTION_KINDS[i % len(QUESTION_KINDS)]
        kind: Kind = "ct" if (i // len(QUESTION_KINDS)) % 2 == 0 else "radiograph"
        if qkind == "presence":
            count = int(rng.integers(0, 2))
        elif qkind == "count":
            count = int(rng.integers(0, 4))
        elif qkind == "size":
            count = int(rng.integers(1, 3))
        else:
            count = 1
        sub = int(rng.integers(0, 2**31 - 1))
        p = make_phantom(sub, kind=kind, n_lesions=count, size=size)
        items.append(_question(qkind, p, f"phantom-{seed}-{i:04d}"))
    return items


def equivalent_diameter_mm(mask: np.ndarray, spacing_mm: float) -> float:
    """Diameter (mm) of the disc with the mask's area: what a lesion's size means here."""
    return 2.0 * math.sqrt(float(mask.sum()) / math.pi) * spacing_mm
