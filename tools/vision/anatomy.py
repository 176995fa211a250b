"""``segment_anatomy``: 14 chest structures outlined by TorchXRayVision's ChestX-Det PSPNet.

Offered when ``MEDLOOP_ANATOMY=xrv-pspnet`` (``tools.models.xrv.AnatomySegmenter``): lungs,
heart, clavicles, scapulae, hila, aorta, diaphragm, mediastinum, trachea ("weasand") and spine
on a frontal chest radiograph. Each structure found is stored as a mask, like ``segment``'s,
so ``measure`` can follow up on its key; the evidence gives each one's area (mm², or px²
without a pixel spacing) and box. The same configuration makes ``measure_lungs`` take the
cardiothoracic ratio from the heart mask (``tools.vision.measure``).

The model's "left" and "right" are its training labels' (ChestX-Det's, the patient's sides on
a PA film); the summary keeps its names and says on which side of the image each mask lies,
so a mirrored film cannot mislead silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from pydantic import Field

from tools.base import ImageArgs
from tools.evidence import Box, Evidence, Measurement
from tools.image import LoadedImage
from tools.models.registry import configured_anatomy
from tools.models.xrv import (
    ANATOMY_STRUCTURES,
    Anatomy,
    AnatomySegmenter,
    anatomy_for,
    structure_names,
)
from tools.spec import ModelNeed, ToolDeps, ToolSpec, VisionConfig
from tools.store import ImageStore
from tools.vision.chest_findings import FRONTAL_CHEST
from tools.vision.measure import mask_area
from tools.vision.segment import mask_key

__all__ = ["TOOLS", "AnatomyArgs", "anatomy_evidence", "structure_names"]


class AnatomyArgs(ImageArgs):
    """Arguments of ``segment_anatomy``."""

    structures: list[str] | None = Field(
        default=None,
        description="which structures to outline, e.g. ['Heart', 'Left Lung']; default all 14: "
                    + ", ".join(ANATOMY_STRUCTURES))


_DESCRIPTION = (
    "Outline chest anatomy on a frontal chest radiograph (TorchXRayVision PSPNet): lungs, "
    "heart, clavicles, scapulae, hila, aorta, diaphragm, mediastinum, trachea, spine. Returns "
    "each structure's mask key (for 'measure'), area and box."
)


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _image_side(mask: np.ndarray) -> str:
    """``image-left`` / ``image-right`` / ``middle`` by the mask's centre of mass."""
    w = mask.shape[1]
    cx = float(np.nonzero(mask)[1].mean())
    if cx < 0.4 * w:
        return "image-left"
    return "image-right" if cx > 0.6 * w else "middle"


def anatomy_evidence(anat: Anatomy, wanted: list[str], img: LoadedImage, store: ImageStore,
                     image_id: str, elapsed_s: float = 0.0) -> Evidence:
    """Evidence of ``segment_anatomy``: a stored mask, area and box per structure found."""
    sp = img.spacing_mm
    found = [n for n in wanted if anat.masks[n].any()]
    missing = [n for n in wanted if n not in found]
    keys, boxes, ms, parts = [], [], [], []
    for name in found:
        mask = anat.masks[name]
        key = store.put_array(mask.astype(np.uint8), key=mask_key())
        area = mask_area(mask, sp)
        keys.append(key)
        boxes.append(Box(xyxy=_box(mask), label=name.lower(),
                         score=round(min(max(anat.scores[name], 0.0), 1.0), 4)))
        ms.append(Measurement(name=f"{name.lower().replace(' ', '_')}_area",
                              value=round(area.value, 2), unit=area.unit,
                              spacing_mm=sp if area.unit.startswith("mm") else None))
        side = "" if not name.startswith(("Left", "Right")) else f", {_image_side(mask)}"
        parts.append(f"{name.lower()} {key} ({area.value:.0f} {area.unit}{side})")
    unit_note = " (pixel spacing unknown, so px2)" if sp is None else ""
    summary = ("anatomy (xrv-pspnet): "
               + ("; ".join(parts) if parts else "no structure found")
               + (f"; not found: {', '.join(n.lower() for n in missing)}" if missing else "")
               + f"{unit_note}. Left/right are the model's labels (the patient's sides on a "
                 "PA film); measure a mask with 'measure' and its key.")
    score = float(np.mean([anat.scores[n] for n in found])) if found else 0.0
    return Evidence(
        tool="segment_anatomy", image_id=image_id, summary=summary,
        score=round(min(max(score, 0.0), 1.0), 4), boxes=boxes, measurements=ms, mask_keys=keys,
        data={"model": "xrv-pspnet", "structures": [n.lower() for n in found],
              "not_found": [n.lower() for n in missing], "input": anat.source},
        elapsed_s=elapsed_s,
    )


def _segmenter(store: ImageStore, model: AnatomySegmenter) -> Callable[[AnatomyArgs], Evidence]:
    def segment_anatomy_tool(args: AnatomyArgs) -> Evidence:
        wanted = structure_names(args.structures) if args.structures else list(ANATOMY_STRUCTURES)
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        anat = model.segment(img, args.image_id)
        return anatomy_evidence(anat, wanted, img, store, args.image_id,
                                time.perf_counter() - t0)

    return segment_anatomy_tool


def _models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    need = configured_anatomy(config)
    return (need,) if need is not None else ()


def _build(deps: ToolDeps) -> Callable[[AnatomyArgs], Evidence]:
    model = anatomy_for(deps.vision)
    if model is None:
        raise ValueError("segment_anatomy needs anatomy = 'xrv-pspnet'")
    return _segmenter(deps.store, model)


TOOLS = (
    ToolSpec(
        name="segment_anatomy", description=_DESCRIPTION, args=AnatomyArgs, variant="xrv-pspnet",
        enabled=lambda deps: deps.vision.anatomy is not None, build=_build, models=_models,
        examples=("Outline the heart on this chest X-ray.",
                  "Segment the lungs and the clavicles.",
                  "Where is the aorta on this film?",
                  "Show me the chest anatomy."),
        domain=FRONTAL_CHEST,
    ),
)
"""``segment_anatomy``: the PSPNet ``MEDLOOP_ANATOMY=xrv-pspnet`` names."""
