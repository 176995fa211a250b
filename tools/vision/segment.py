"""Box- or point-prompted segmentation, and the factory of the vision tools.

``segment`` is the pure function: a display, a box and/or points, and a segmenter in, a
``Segmentation`` out (mask, predicted IoU, area and diameters in mm or px). The ``segment`` tool
wraps it: it fetches the image from the store, keeps the mask in the store under a
``mask-...`` key that its summary names (so ``measure`` can be called on it) and reports the
predicted IoU as the evidence score.

Segmenters: LiteMedSAM by default (``tools.models.medsam``, weights in a package) or a transformers
SAM checkpoint (``tools.models.hf.HfSamSegmenter``) by configuration. LiteMedSAM was trained on
box prompts only and returns nothing useful for a point (tried: Dice 0.00 on a disc phantom), so
for it a point prompt is turned into boxes: square boxes of growing size centred on the points
are tried (decoder only: the embedding is cached) and the mask that holds every positive
point, avoids every negative one, is not cut by its box's edges and has the highest predicted
IoU is kept. SAM models take points natively.

Formats: boxes ``[x0, y0, x1, y1]`` pixels of the display (XYXY, x right, y down, x1/y1
exclusive); points ``[x, y]`` pixels; masks bool ``(H, W)``; ``spacing_mm`` ``(row, col)``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field, model_validator

from tools.base import ImageArgs
from tools.domain import Domain
from tools.errors import ToolInputError
from tools.evidence import Box, Evidence, Measurement
from tools.models.medsam import Segmenter, get_predictor
from tools.models.registry import VisionConfig, segmenter_need
from tools.models.select import detector_for, segmenter_for
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore
from tools.vision.find import find_tools
from tools.vision.measure import Quantity, mask_area, mask_axes, measure_tools

__all__ = [
    "TOOLS",
    "Segmentation",
    "Segmenter",
    "mask_key",
    "segment",
    "segment_tools",
    "segmenter_for",
    "validate_box",
    "validate_points",
    "vision_tools",
]


def mask_key() -> str:
    """A fresh store key for a mask: ``mask-`` and 12 hex digits, short enough to quote."""
    return f"mask-{uuid.uuid4().hex[:12]}"

# A box narrower or shorter than this (pixels) cannot hold anything LiteMedSAM can outline
# (its input grid is 256 px, so a 2 px box on a 512 px image is a single input pixel).
_MIN_BOX_PX = 2.0
# Point prompts on a box-only model: half-sizes of the square boxes tried, from this fraction
# of the image's longest side up to half of it, each 1.6x the last (6 decoder runs, 0.3-1 s
# each on 2 busy cores). All sizes are tried: stopping at the first uncut mask was tried and
# failed, because a box inside a uniform object can give a small uncut blob of low predicted
# IoU. The smallest box is 10 % of the image's side: for smaller objects a box is better.
_POINT_BOX_MIN = 0.05
_POINT_BOX_GROWTH = 1.6
# A candidate mask covering more than this fraction of its box's edge pixels is cut by the box
# (the object goes on beyond it): a larger box should be used.
_EDGE_CUT = 0.15


@dataclass(frozen=True)
class Segmentation:
    """What ``segment`` found inside a box.

    ``box`` is the box used (XYXY pixels, clipped to the image); ``mask`` bool ``(H, W)``;
    ``score`` the decoder's predicted IoU in [0, 1]; ``area`` in mm² or px², ``long_axis`` and
    ``short_axis`` in mm or px (None when the mask is empty).
    """

    box: tuple[float, float, float, float]
    mask: np.ndarray
    score: float
    area: Quantity
    long_axis: Quantity | None
    short_axis: Quantity | None
    spacing_mm: tuple[float, float] | None


def validate_box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """A usable box for an image of ``shape`` ``(H, W[, C])``, or ``ToolInputError``.

    A box partly outside the image is clipped to it; one that is malformed, empty, inverted,
    smaller than 2 px or entirely outside raises, naming the image size so the caller can retry.
    """
    h, w = int(shape[0]), int(shape[1])
    size = f"the image is {w}x{h} px (x 0..{w}, y 0..{h})"
    try:
        nums = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ToolInputError(f"box must be four numbers [x0, y0, x1, y1]; {size}") from None
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ToolInputError(f"box must be four finite numbers [x0, y0, x1, y1]; {size}")
    x0, y0, x1, y1 = nums
    if x1 <= x0 or y1 <= y0:
        raise ToolInputError(f"box {nums} is empty or inverted: need x0 < x1 and y0 < y1; {size}")
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ToolInputError(f"box {nums} lies outside the image; {size}")
    if cx1 - cx0 < _MIN_BOX_PX or cy1 - cy0 < _MIN_BOX_PX:
        raise ToolInputError(f"box {nums} is smaller than {_MIN_BOX_PX:g} px inside the image; "
                             f"{size}")
    return cx0, cy0, cx1, cy1


def validate_points(points: Sequence[Sequence[float]], labels: Sequence[int] | None,
                    shape: tuple[int, ...]) -> tuple[list[tuple[float, float]], list[int]]:
    """Points ``[x, y]`` inside an image of ``shape`` and their labels (1 object, 0 background).

    Raises ``ToolInputError`` naming the image size for a point outside it or malformed, for
    labels that do not match the points, or when no point is positive.
    """
    h, w = int(shape[0]), int(shape[1])
    size = f"the image is {w}x{h} px (x 0..{w}, y 0..{h})"
    pts: list[tuple[float, float]] = []
    for p in points:
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise ToolInputError(f"each point must be two numbers [x, y]; {size}") from None
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < w and 0 <= y < h):
            raise ToolInputError(f"point [{x:g}, {y:g}] lies outside the image; {size}")
        pts.append((x, y))
    labs = [1] * len(pts) if labels is None else [int(v) for v in labels]
    if len(labs) != len(pts) or any(v not in (0, 1) for v in labs):
        raise ToolInputError("point_labels must give 1 (object) or 0 (background) per point")
    if 1 not in labs:
        raise ToolInputError("at least one point must be on the object (label 1)")
    return pts, labs


def _edge_fraction(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the box's edge pixels that the mask covers.

    Edges on the image border are skipped: an object may legitimately run to the film's edge.
    """
    h, w = mask.shape
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = math.ceil(box[2]) - 1, math.ceil(box[3]) - 1
    edges = []
    if y0 > 0:
        edges.append(mask[y0, x0:x1 + 1])
    if y1 < h - 1:
        edges.append(mask[y1, x0:x1 + 1])
    if x0 > 0:
        edges.append(mask[y0:y1 + 1, x0])
    if x1 < w - 1:
        edges.append(mask[y0:y1 + 1, x1])
    if not edges:
        return 0.0
    return float(np.concatenate(edges).mean())


def _components_with(mask: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """The connected parts of ``mask`` that hold at least one of ``points``."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    keep = {int(labels[int(y), int(x)]) for x, y in points} - {0}
    return np.isin(labels, list(keep)) if keep else np.zeros_like(mask)


def points_via_boxes(
    predictor: Segmenter, image_id: str | None, display: np.ndarray,
    points: Sequence[tuple[float, float]], labels: Sequence[int],
) -> tuple[np.ndarray, float, tuple[float, float, float, float]]:
    """Point prompts on a box-only model: the best mask over growing boxes around the points.

    Returns ``(mask, predicted IoU, box used)``; raises ``ToolInputError`` when no box gives a
    mask holding the positive points (nothing distinct there to outline).
    """
    h, w = display.shape[:2]
    pos = [p for p, lab in zip(points, labels, strict=True) if lab == 1]
    neg = [p for p, lab in zip(points, labels, strict=True) if lab == 0]
    xs, ys = [p[0] for p in pos], [p[1] for p in pos]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    half = max(_POINT_BOX_MIN * max(h, w), (max(xs) - min(xs)) / 2 + 2,
               (max(ys) - min(ys)) / 2 + 2, _MIN_BOX_PX)
    best: tuple[float, np.ndarray, tuple[float, float, float, float]] | None = None
    fallback = best
    while True:
        box = (max(0.0, cx - half), max(0.0, cy - half), min(float(w), cx + half),
               min(float(h), cy + half))
        mask, iou = predictor.predict(image_id, display, box)
        inside = np.zeros_like(mask)
        inside[math.floor(box[1]):math.ceil(box[3]), math.floor(box[0]):math.ceil(box[2])] = True
        mask = _components_with(mask & inside, pos)
        ok = (all(mask[int(y), int(x)] for x, y in pos)
              and not any(mask[int(y), int(x)] for x, y in neg))
        if ok and (fallback is None or iou > fallback[0]):
            fallback = (iou, mask, box)
        if ok and _edge_fraction(mask, box) <= _EDGE_CUT and (best is None or iou > best[0]):
            best = (iou, mask, box)
        if half >= max(h, w) / 2:
            break
        half = min(half * _POINT_BOX_GROWTH, max(h, w) / 2)
    chosen = best or fallback
    if chosen is None:
        raise ToolInputError("no distinct object found at those points; give a box instead")
    return chosen[1], chosen[0], chosen[2]


def segment(
    display: np.ndarray,
    box: Sequence[float] | None,
    predictor: Segmenter,
    image_id: str | None = None,
    spacing_mm: tuple[float, float] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
) -> Segmentation:
    """Segment the object inside ``box`` and/or at ``points`` of ``display`` (uint8 grey/RGB).

    ``image_id`` keys the predictor's embedding cache, so further prompts on the same image only
    run the decoder. With a box the mask is restricted to it: a box prompt asks for what is
    inside it, and the decoder's spill beyond the box is leakage into neighbours. Points are
    ``[x, y]`` pixels with labels 1 (object, the default) or 0 (background).
    """
    if box is None and not points:
        raise ToolInputError("give a box [x0, y0, x1, y1] or at least one point [x, y]")
    if points:
        pts, labs = validate_points(points, point_labels, display.shape)
        clip = validate_box(box, display.shape) if box is not None else None
        if predictor.supports_points:
            mask, score = predictor.predict_points(image_id, display, pts, labs, clip)
            ys, xs = np.nonzero(mask)
            used = clip or ((float(xs.min()), float(ys.min()), float(xs.max()) + 1,
                             float(ys.max()) + 1) if xs.size else (0.0, 0.0, 1.0, 1.0))
        else:
            if clip is not None:  # a box-only model: the box is the prompt, points select
                mask, score = predictor.predict(image_id, display, clip)
                mask = _components_with(mask, [p for p, v in zip(pts, labs, strict=True) if v])
                used = clip
            else:
                mask, score, used = points_via_boxes(predictor, image_id, display, pts, labs)
        x0, y0, x1, y1 = used
    else:
        assert box is not None
        x0, y0, x1, y1 = validate_box(box, display.shape)
        mask, score = predictor.predict(image_id, display, (x0, y0, x1, y1))
    if box is not None:
        inside = np.zeros_like(mask)
        inside[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)] = True
        mask = mask & inside
    long_axis: Quantity | None = None
    short_axis: Quantity | None = None
    if mask.any():
        area = mask_area(mask, spacing_mm)
        axes = mask_axes(mask, spacing_mm)
        long_axis, short_axis = axes.long, axes.short
    else:
        area = Quantity(0.0, "mm2" if spacing_mm else "px2")
    return Segmentation(box=(x0, y0, x1, y1), mask=mask, score=score, area=area,
                        long_axis=long_axis, short_axis=short_axis, spacing_mm=spacing_mm)


# =============================================================================================
# Tool wrappers
# =============================================================================================
class SegmentArgs(ImageArgs):
    """Arguments of ``segment``: a box, points, or both."""

    box: list[float] | None = Field(
        default=None, min_length=4, max_length=4,
        description="pixel box [x0, y0, x1, y1] around the object: x right, y down",
    )
    points: list[list[float]] | None = Field(
        default=None, max_length=8,
        description="pixel points [[x, y], ...] on the object, when there is no box",
    )
    point_labels: list[int] | None = Field(
        default=None, description="per point: 1 on the object (default), 0 on background",
    )
    label: str = Field(default="", description="what is outlined, e.g. 'nodule'")

    @model_validator(mode="after")
    def _needs_a_prompt(self) -> SegmentArgs:
        if self.box is None and not self.points:
            raise ValueError("give a box [x0, y0, x1, y1] or points [[x, y], ...]")
        return self


_SEGMENT = (
    "Outline one object in the image, given a pixel box [x0, y0, x1, y1] around it or points "
    "[[x, y]] on it (a medical segmentation model). Returns its mask (with a mask key for "
    "'measure'), area (mm2, or px2 when the pixel spacing is unknown), long and short axis, and "
    "the model's predicted IoU as a quality score. Use when you know WHERE the object is; to "
    "locate a named structure use 'find'."
)


def segmentation_evidence(seg: Segmentation, store: ImageStore, image_id: str, label: str,
                          spacing_source: str | None = None, elapsed_s: float = 0.0,
                          model: str = "") -> Evidence:
    """Evidence for one segmentation: the mask stored by key, area and axes with lines."""
    sp = seg.spacing_mm
    name = label or "object"
    key = store.put_array(seg.mask.astype(np.uint8), key=mask_key())

    def meas(n: str, q: Quantity) -> Measurement:
        return Measurement(name=n, value=round(q.value, 4), unit=q.unit,
                           spacing_mm=sp if q.unit.startswith("mm") else None, line=q.line)

    ms = [meas("area", seg.area)]
    if seg.long_axis is not None and seg.short_axis is not None:
        ms += [meas("long_axis", seg.long_axis), meas("short_axis", seg.short_axis)]
        size = (f"area {seg.area.value:.1f} {seg.area.unit}, long axis "
                f"{seg.long_axis.value:.1f} {seg.long_axis.unit}, short axis "
                f"{seg.short_axis.value:.1f} {seg.short_axis.unit}")
    else:
        size = "an empty mask (nothing segmented there)"
    if sp is None:
        size += " (pixel spacing unknown, so px)"
    else:
        size += f" (spacing {sp[0]:.4g}x{sp[1]:.4g} mm from {spacing_source or 'the image'}"
        if spacing_source == "ImagerPixelSpacing":
            size += ", at the detector: magnification not corrected"
        size += ")"
    x0, y0, x1, y1 = seg.box
    summary = (f"{name} in box [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]: {size}; predicted "
               f"IoU {seg.score:.2f}; mask key {key}.")
    return Evidence(
        tool="segment", image_id=image_id, summary=summary, score=seg.score,
        boxes=[Box(xyxy=seg.box, label=name, score=seg.score)], measurements=ms,
        mask_keys=[key],
        data={"label": name, "spacing_source": spacing_source if sp else None,
              "model": model},
        elapsed_s=elapsed_s,
    )


def _segmenter(store: ImageStore,
               predictor: Segmenter | None) -> Callable[[SegmentArgs], Evidence]:
    def segment_tool(args: SegmentArgs) -> Evidence:
        img = store.get(args.image_id)
        model = predictor or get_predictor()
        t0 = time.perf_counter()
        seg = segment(img.display, args.box, model, args.image_id, img.spacing_mm,
                      points=args.points, point_labels=args.point_labels)
        return segmentation_evidence(seg, store, args.image_id, args.label, img.spacing_source,
                                     time.perf_counter() - t0, model=model.name)

    return segment_tool


TOOLS = (
    ToolSpec(
        name="segment", description=_SEGMENT, args=SegmentArgs,
        build=lambda deps: _segmenter(deps.store, segmenter_for(deps.vision)),
        models=lambda config: (segmenter_need(config),),
        examples=("Outline the structure inside this box.",
                  "Segment the object at point (x, y).",
                  "What is the area of the object in box [x0, y0, x1, y1]?"),
        domain=Domain(
            validated_on="broad medical imaging (LiteMedSAM: trained on about 1.5 million "
                         "image-mask pairs of CT, MR, X-ray, ultrasound, endoscopy, dermoscopy, "
                         "fundus, mammography, OCT and microscopy)",
            why="a box-prompted segmenter trained across modalities; its predicted IoU, the "
                "evidence's score, already says how well a mask fits"),
    ),
)
"""``segment``: packaged LiteMedSAM, or the SAM-family checkpoint ``MEDLOOP_SEGMENTER`` names."""


def segment_tools(store: ImageStore, predictor: Segmenter | None = None) -> list[BaseTool]:
    """The ``segment`` tool over images in ``store`` (``predictor``: default LiteMedSAM)."""
    return [TOOLS[0].bind(_segmenter(store, predictor), store)]


def vision_tools(store: ImageStore, predictor: Segmenter | None = None,
                 config: VisionConfig | None = None) -> list[BaseTool]:
    """``segment``, ``find``, ``measure``, ``measure_lungs`` (and ``classify`` when configured).

    The vision experts alone, for tests and benchmarks (the planner's tool set is
    ``agent.planner.toolset.default_tools``). ``config`` (default: the packaged models,
    ``VisionConfig()``) picks the models; ``predictor`` overrides the segmenter (tests pass
    their own). Nothing loads here: each model loads on the first call that needs it.
    """
    from tools.vision.classify import TOOLS as CLASSIFY

    cfg = config or VisionConfig()
    seg = predictor or segmenter_for(cfg)
    deps = ToolDeps(store, cfg)
    return [*segment_tools(store, seg), *find_tools(store, seg, detector_for(cfg)),
            *measure_tools(store, seg),
            *(spec.tool(deps) for spec in CLASSIFY if spec.enabled(deps))]
