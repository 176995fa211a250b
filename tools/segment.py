"""Box-prompted segmentation with LiteMedSAM, and the factory of the vision tools.

``segment`` is the pure function: a display, a box and a predictor in, a ``Segmentation`` out
(mask, predicted IoU, area and diameters in mm or px). The ``segment`` tool wraps it: it fetches
the image from the store, keeps the mask in the store (evidence holds only its key) and reports
the predicted IoU as the evidence score.

Formats: boxes ``[x0, y0, x1, y1]`` pixels of the display (XYXY, x right, y down, x1/y1
exclusive); masks bool ``(H, W)``; ``spacing_mm`` ``(row, col)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs, make_tool
from tools.errors import ToolInputError
from tools.evidence import Box, Evidence, Measurement
from tools.find import find_tools
from tools.measure import Quantity, mask_area, mask_axes, measure_tools
from tools.medsam import MedSamPredictor, get_predictor
from tools.store import ImageStore

__all__ = ["Segmentation", "segment", "segment_tools", "validate_box", "vision_tools"]

# A box narrower or shorter than this (pixels) cannot hold anything LiteMedSAM can outline
# (its input grid is 256 px, so a 2 px box on a 512 px image is a single input pixel).
_MIN_BOX_PX = 2.0


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


def segment(
    display: np.ndarray,
    box: Sequence[float],
    predictor: MedSamPredictor,
    image_id: str | None = None,
    spacing_mm: tuple[float, float] | None = None,
) -> Segmentation:
    """Segment the object inside ``box`` of ``display`` (uint8 ``(H, W)`` or ``(H, W, 3)``).

    ``image_id`` keys the predictor's embedding cache, so further boxes on the same image only
    run the decoder. The mask is restricted to the box: a box prompt asks for what is inside it,
    and LiteMedSAM's spill beyond the box is leakage into neighbours.
    """
    x0, y0, x1, y1 = validate_box(box, display.shape)
    mask, score = predictor.predict(image_id, display, (x0, y0, x1, y1))
    inside = np.zeros_like(mask)
    inside[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)] = True
    mask &= inside
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
    """Arguments of ``segment``."""

    box: list[float] = Field(
        min_length=4, max_length=4,
        description="pixel box [x0, y0, x1, y1] around the object: x right, y down",
    )
    label: str = Field(default="", description="what the box contains, e.g. 'nodule'")


_SEGMENT = (
    "Outline the object inside a pixel box [x0, y0, x1, y1] with LiteMedSAM (a medical "
    "segmentation model): returns its mask, area (mm2, or px2 when the pixel spacing is "
    "unknown), long and short axis (mm or px) and the model's predicted IoU as a quality score."
)


def segmentation_evidence(seg: Segmentation, store: ImageStore, image_id: str, label: str,
                          spacing_source: str | None = None, elapsed_s: float = 0.0) -> Evidence:
    """Evidence for one segmentation: the mask stored by key, area and axes with lines."""
    sp = seg.spacing_mm
    name = label or "object"
    key = store.put_array(seg.mask.astype(np.uint8))

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
        size = "an empty mask (nothing segmented inside the box)"
    if sp is None:
        size += " (pixel spacing unknown, so px)"
    elif spacing_source == "ImagerPixelSpacing":
        size += " (at the detector: magnification not corrected)"
    x0, y0, x1, y1 = seg.box
    summary = (f"{name} in box [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]: {size}; predicted "
               f"IoU {seg.score:.2f}.")
    return Evidence(
        tool="segment", image_id=image_id, summary=summary, score=seg.score,
        boxes=[Box(xyxy=seg.box, label=name, score=seg.score)], measurements=ms,
        mask_keys=[key], data={"label": name}, elapsed_s=elapsed_s,
    )


def segment_tools(store: ImageStore,
                  predictor: MedSamPredictor | None = None) -> list[BaseTool]:
    """The ``segment`` tool over images in ``store``."""

    def segment_tool(args: SegmentArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        seg = segment(img.display, args.box, predictor or get_predictor(), args.image_id,
                      img.spacing_mm)
        return segmentation_evidence(seg, store, args.image_id, args.label, img.spacing_source,
                                     time.perf_counter() - t0)

    return [make_tool(segment_tool, name="segment", description=_SEGMENT,
                      args_schema=SegmentArgs)]


def vision_tools(store: ImageStore, predictor: MedSamPredictor | None = None) -> list[BaseTool]:
    """``segment``, ``find`` and ``measure_lungs``, sharing one LiteMedSAM predictor.

    Nothing loads here: the network loads on the first call of any of them.
    """
    return [*segment_tools(store, predictor), *find_tools(store, predictor),
            *measure_tools(store, predictor)]
