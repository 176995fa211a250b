"""Grounding a named structure to boxes and masks, with the models that run offline on a CPU.

No open-vocabulary detector (Grounding DINO, OWL-ViT) ships its weights in a package, so only
targets with a dedicated offline detector can be grounded. Today that is the lungs on a frontal
chest radiograph: ``lungs-finder``'s classical HOG / LBP / Haar detectors give a box per lung,
and LiteMedSAM refines each box into a mask; and burned-in text, boxed by the packaged OCR
(``tools.ingest.burned_in.find_text``; text that looks like an identifier is not quoted). Any other
phrase raises ``ToolInputError``
("cannot be grounded offline"), so the planner picks another target or tool: a made-up box
would be a failure dressed as a result.

Sides: lungs are named from the PATIENT's point of view. On a PA (or AP) film displayed in the
standard way the patient faces the viewer, so the patient's RIGHT lung is on the IMAGE's LEFT.
When the DICOM ``PatientOrientation`` says the image's rows run toward the patient's right
(``R``, a mirrored display) the sides are swapped; otherwise the standard display is assumed.

With an open-vocabulary detector configured (``MEDLOOP_DETECTOR=hf:...``: OWLv2 or Grounding
DINO, ``tools.models.hf``), any phrase is looked for: the detector's boxes, with their scores,
are refined into masks by the configured segmenter; no box above the threshold is reported as
such (a negative finding, not an error).

Boxes are ``[x0, y0, x1, y1]`` pixels of the display (XYXY); masks bool ``(H, W)``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import RADIOGRAPH_MODALITIES, Domain
from tools.errors import OutsideDomain, ToolInputError
from tools.evidence import Box, Evidence
from tools.models.medsam import Segmenter, get_predictor
from tools.models.registry import configured_detector, segmenter_need
from tools.models.select import detector_for, segmenter_for
from tools.packaged import LUNGS_FINDER, RAPIDOCR
from tools.spec import ModelNeed, ToolSpec, VisionConfig
from tools.store import ImageStore

__all__ = [
    "GROUNDABLE",
    "TOOLS",
    "FoundLungs",
    "Lung",
    "detect_lung_boxes",
    "find_lungs",
    "find_phrase",
    "find_tools",
    "largest_component",
    "normalise_target",
]

# Phrases the offline models can ground, and the synonyms the planner may use for them.
GROUNDABLE = ("lungs", "right lung", "left lung", "text")
_SYNONYMS = {
    "text": "text", "burned-in text": "text", "burned in text": "text", "text regions": "text",
    "writing": "text", "annotations": "text", "labels": "text", "markers": "text",
    "lungs": "lungs", "lung": "lungs", "both lungs": "lungs", "lung fields": "lungs",
    "lung field": "lungs", "the lungs": "lungs",
    "right lung": "right lung", "the right lung": "right lung",
    "left lung": "left lung", "the left lung": "left lung",
}
# lungs-finder's detectors were trained on small radiographs: run them with this longest side.
_DETECT_SIDE = 512
# Margin added around each detector box before prompting LiteMedSAM, as a fraction of the
# box size: the detectors' boxes sit tight or slightly inside the lung edge.
_BOX_MARGIN = 0.04
# Modalities that are never a projection chest radiograph.
_NOT_RADIOGRAPH = {"CT", "MR", "US", "NM", "PT", "XA", "RF", "MG", "OP", "SM"}
# BodyPartExamined values under which a film can show the lungs.
_CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "CHEST_PA", "TORSO"}

FRONTAL_CHEST_RADIOGRAPH = Domain(
    validated_on="frontal (PA/AP) chest radiographs (lungs-finder's detectors were trained on "
                 "them; checked on pydicom-data's RG1_UNCI)",
    modalities=RADIOGRAPH_MODALITIES,
    body_parts=frozenset(_CHEST_PARTS - {"CHEST_LAT"}),
    projections=frozenset({"PA", "AP"}),
    grey_only=True, outside="refuse", unknown="flag",
    why="on a CT, an MR or a film of another part the detectors still box two 'lungs', which "
        "would be measured as such: refused, so the planner picks another tool. Without DICOM "
        "tags (a JPEG) they box two 'lungs' on head and abdominal images too (66 of the 77 "
        "non-chest VQA-RAD dev images), so the result runs flagged, never as a finding",
    applies=lambda args: _SYNONYMS.get(_key(getattr(args, "target", "lungs"))) != "text",
)
"""Where the lungs-only ``find`` and ``measure_lungs`` are valid (OCR of text: any image)."""

# Open-vocabulary detections scoring below this are not reported.
DETECT_THRESHOLD = 0.2


@dataclass(frozen=True)
class Lung:
    """One lung: ``side`` is the patient's ("right"/"left"); box XYXY pixels; mask (H, W)."""

    side: str
    box: tuple[float, float, float, float]
    detector_box: tuple[float, float, float, float]
    mask: np.ndarray
    score: float

    @property
    def label(self) -> str:
        """``"right lung"`` or ``"left lung"``."""
        return f"{self.side} lung"


@dataclass(frozen=True)
class FoundLungs:
    """Both lungs, patient's right first, and how the sides were decided."""

    lungs: list[Lung]
    side_rule: str
    detectors: dict[str, int] = field(default_factory=dict)

    def side(self, side: str) -> Lung:
        """The lung on the patient's ``side`` ("right" or "left")."""
        return next(lung for lung in self.lungs if lung.side == side)


def _key(target: str) -> str:
    return " ".join(str(target).lower().replace("_", " ").split())


def normalise_target(target: str) -> str:
    """The canonical groundable target for ``target``, or ``ToolInputError`` naming them."""
    key = _key(target)
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    raise ToolInputError(
        f"'{target}' cannot be grounded offline; groundable: {', '.join(GROUNDABLE)}"
    )


def detect_lung_boxes(grey: np.ndarray) -> tuple[list[tuple[float, ...]], dict[str, int]]:
    """Two lung boxes (XYXY pixels of ``grey``), image-left first, from lungs-finder.

    Each of its three detectors (HOG+SVM, LBP and Haar cascades) proposes a box per side; the
    per-coordinate median of the proposals is kept, because single detectors are erratic (HOG
    often runs to the image edge, cascades clip the bases). The detectors are run on a copy
    whose longest side is 512 px, the scale they work at. ``grey`` is uint8 ``(H, W)``.
    Returns ``([]/one/two boxes], detector counts)``; missing sides are not invented.
    """
    import cv2
    import lungs_finder as lf

    h, w = grey.shape
    scale = min(1.0, _DETECT_SIDE / max(h, w))
    small = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    # lungs-finder's "right" detectors look for the lung on the image's left (the patient's
    # right on a standard PA display); we only use them as image-left / image-right.
    finders = {
        "hog": (lf.hog_finder.find_right_lung_hog, lf.hog_finder.find_left_lung_hog),
        "lbp": (lf.lbp_finder.find_right_lung_lbp, lf.lbp_finder.find_left_lung_lbp),
        "haar": (lf.haar_finder.find_right_lung_haar, lf.haar_finder.find_left_lung_haar),
    }
    per_side: list[list[tuple[float, float, float, float]]] = [[], []]
    counts: dict[str, int] = {}
    for name, fns in finders.items():
        counts[name] = 0
        for i, fn in enumerate(fns):
            found = fn(small)
            if found is None:
                continue
            x, y, bw, bh = (float(v) / scale for v in found)
            per_side[i].append((x, y, x + bw, y + bh))
            counts[name] += 1
    boxes: list[tuple[float, ...]] = []
    for proposals in per_side:
        if proposals:
            med = np.median(np.array(proposals), axis=0)
            boxes.append(tuple(float(v) for v in med))
    if len(boxes) == 2 and (boxes[0][0] + boxes[0][2]) > (boxes[1][0] + boxes[1][2]):
        boxes.reverse()  # keep image-left first even if the detectors disagree
    return boxes, counts


def find_lungs(
    display: np.ndarray,
    predictor: Segmenter,
    image_id: str | None = None,
    meta: dict[str, object] | None = None,
) -> FoundLungs:
    """Find both lungs on a frontal chest radiograph: lungs-finder boxes, LiteMedSAM masks.

    Each detector box, widened by 4 %, prompts LiteMedSAM on a CLAHE-enhanced copy; each
    mask is reduced to its largest component with holes filled.

    ``display`` is uint8 ``(H, W)`` or ``(H, W, 3)`` (turned grey). ``meta`` is the image's
    de-identified metadata: a non-radiograph modality, or a detector that finds fewer than two
    lungs, raises ``OutsideDomain`` (the planner should not ask for lungs there; no other
    arguments mend the image).
    """
    meta = meta or {}
    modality = str(meta.get("modality") or "").upper()
    if modality in _NOT_RADIOGRAPH:
        raise OutsideDomain(
            f"lungs can only be found on a frontal chest radiograph; this image is {modality}",
            f"modality {modality}",
        )
    part = str(meta.get("body_part") or "").upper().replace(" ", "_")
    if part and part not in _CHEST_PARTS:
        raise OutsideDomain(
            f"lungs can only be found on a frontal chest radiograph; this image is of the {part}",
            f"body part {part}",
        )
    grey = _grey(display)
    h, w = grey.shape
    boxes, counts = detect_lung_boxes(grey)
    if len(boxes) < 2:
        raise OutsideDomain(
            f"the lung detectors found {len(boxes)} of 2 lungs; is this a frontal chest "
            "radiograph?",
            f"the lung detectors found {len(boxes)} of 2 lungs",
        )
    # LiteMedSAM separates the lung from the chest wall and hila better on a locally
    # contrast-equalised film (CLAHE, the usual chest X-ray enhancement): on RG1_UNCI its
    # predicted IoU rose from 0.65/0.76 to 0.72/0.84. It gets its own embedding cache key.
    enhanced = _clahe(grey)
    key = f"{image_id}:clahe" if image_id else None
    image_left_is_patient_right, rule = _side_rule(meta)
    sides = ("right", "left") if image_left_is_patient_right else ("left", "right")
    lungs: list[Lung] = []
    for side, det in zip(sides, boxes, strict=True):
        x0, y0, x1, y1 = det
        mx, my = _BOX_MARGIN * (x1 - x0), _BOX_MARGIN * (y1 - y0)
        prompt = (max(0.0, x0 - mx), max(0.0, y0 - my), min(float(w), x1 + mx),
                  min(float(h), y1 + my))
        mask, iou = predictor.predict(key, enhanced, prompt)
        lungs.append(Lung(side=side, box=_round_box(prompt), detector_box=_round_box(det),
                          mask=largest_component(mask), score=iou))
    lungs.sort(key=lambda lung: lung.side != "right")  # patient's right first
    return FoundLungs(lungs=lungs, side_rule=rule, detectors=counts)


def _side_rule(meta: dict[str, object]) -> tuple[bool, str]:
    """Whether the image's left is the patient's right, and why we think so."""
    orientation = meta.get("patient_orientation")
    first = ""
    if isinstance(orientation, list | tuple) and orientation:
        first = str(orientation[0]).upper()
    elif isinstance(orientation, str) and orientation:
        first = orientation.replace("\\", " ").split()[0].upper()
    if first.startswith("L"):
        return True, "PatientOrientation: rows run to the patient's left (standard PA display)"
    if first.startswith("R"):
        return False, "PatientOrientation: rows run to the patient's right (mirrored display)"
    return True, "standard frontal display assumed (patient's right on the image's left)"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask, its holes filled.

    A lung is one connected region; the decoder's stray islands (below the diaphragm, in the
    other lung) would distort areas and the lung borders that the CTR reads.
    """
    import cv2
    from scipy import ndimage

    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.asarray(ndimage.binary_fill_holes(labels == biggest), dtype=bool)


def _clahe(grey: np.ndarray) -> np.ndarray:
    import cv2

    return np.asarray(cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey))


def _grey(display: np.ndarray) -> np.ndarray:
    if display.ndim == 3:
        luma = display[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(luma, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(display, dtype=np.uint8)


def _round_box(b: tuple[float, ...]) -> tuple[float, float, float, float]:
    return (round(b[0], 1), round(b[1], 1), round(b[2], 1), round(b[3], 1))


# =============================================================================================
# Tool wrapper
# =============================================================================================
class FindArgs(ImageArgs):
    """Arguments of ``find``."""

    target: str = Field(
        description="what to find, e.g. 'lungs', 'right lung', 'left lung', 'text'"
    )


def _find_description(open_vocab: bool) -> str:
    if open_vocab:
        return ("Locate a named structure or finding (e.g. 'nodule', 'heart', 'lungs') and "
                "outline it: returns boxes [x0, y0, x1, y1] (pixels) with detector scores and a "
                "mask per box (mask keys for 'measure'). Use when you do not know where "
                "something is; an empty result means nothing scored above the threshold.")
    return ("Locate the lungs on a frontal chest radiograph and outline them: returns a box "
            "[x0, y0, x1, y1] (pixels) and a mask per lung (mask keys for 'measure'). Targets: "
            "'lungs', 'right lung', 'left lung' (the patient's sides), or 'text' (boxes of "
            "burned-in text). Other targets cannot be grounded offline and are refused; for "
            "CT/MR use 'segment' with a box.")


def _mask_key() -> str:
    return f"mask-{uuid.uuid4().hex[:12]}"


def find_evidence(found: FoundLungs, target: str, store: ImageStore, image_id: str,
                  elapsed_s: float = 0.0) -> Evidence:
    """Evidence for the lungs matching ``target``: boxes, masks (stored), mean predicted IoU."""
    chosen = [lung for lung in found.lungs if target == "lungs" or lung.label == target]
    keys = [store.put_array(lung.mask.astype(np.uint8), key=_mask_key()) for lung in chosen]
    parts = []
    for lung, key in zip(chosen, keys, strict=True):
        x0, y0, x1, y1 = lung.box
        parts.append(f"{lung.label} box [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}], mask "
                     f"{lung.mask.mean():.1%} of the image, predicted IoU {lung.score:.2f}, "
                     f"mask key {key}")
    summary = "; ".join(parts) + f" ({found.side_rule})."
    return Evidence(
        tool="find",
        image_id=image_id,
        summary=summary,
        score=float(np.mean([lung.score for lung in chosen])),
        boxes=[Box(xyxy=lung.box, label=lung.label, score=lung.score) for lung in chosen],
        mask_keys=keys,
        data={"target": target, "labels": [lung.label for lung in chosen],
              "side_rule": found.side_rule, "detectors": found.detectors},
        elapsed_s=elapsed_s,
    )


@dataclass(frozen=True)
class Found:
    """One open-vocabulary match: the detector's box and score, the mask and its IoU estimate."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    mask: np.ndarray
    mask_iou: float


def text_find_evidence(display: np.ndarray, image_id: str, frames: int = 1) -> Evidence:
    """Evidence of ``find`` for text: the OCR's boxes, identifiers not quoted (as read_text)."""
    from tools.ingest.burned_in import find_text, text_evidence

    t0 = time.perf_counter()
    ev = text_evidence(find_text(display), image_id, frames)
    return ev.model_copy(update={"tool": "find", "data": {**ev.data, "target": "text"},
                                 "elapsed_s": time.perf_counter() - t0})


def find_phrase(display: np.ndarray, target: str, detector: Any, predictor: Segmenter,
                image_id: str | None = None,
                threshold: float = DETECT_THRESHOLD) -> list[Found]:
    """Boxes for ``target`` from an open-vocabulary detector, each refined into a mask.

    ``detector`` is an ``HfDetector``; ``predictor`` outlines each box (the box restricts the
    mask). Best score first; the list may be empty.
    """
    phrase = " ".join(str(target).split())
    if not phrase:
        raise ToolInputError("target is empty: name what to find, e.g. 'nodule'")
    out = []
    for det in detector.detect(display, [phrase], threshold=threshold):
        mask, iou = predictor.predict(image_id, display, det.box)
        x0, y0, x1, y1 = det.box
        inside = np.zeros_like(mask)
        inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        out.append(Found(box=det.box, label=det.label, score=det.score, mask=mask & inside,
                         mask_iou=iou))
    return out


def phrase_evidence(found: list[Found], target: str, store: ImageStore, image_id: str,
                    model: str, elapsed_s: float = 0.0) -> Evidence:
    """Evidence for open-vocabulary matches; an empty list is an ok, negative observation."""
    keys = [store.put_array(f.mask.astype(np.uint8), key=_mask_key()) for f in found]
    if not found:
        summary = (f"no box for '{target}' scored {DETECT_THRESHOLD:.2f} or more ({model}); "
                   "it was not located (which does not prove it absent).")
    else:
        summary = "; ".join(
            f"'{f.label}' box [{f.box[0]:.0f}, {f.box[1]:.0f}, {f.box[2]:.0f}, {f.box[3]:.0f}] "
            f"score {f.score:.2f}, mask predicted IoU {f.mask_iou:.2f}, mask key {k}"
            for f, k in zip(found, keys, strict=True)) + f" ({model})."
    return Evidence(
        tool="find", image_id=image_id, summary=summary,
        score=max((f.score for f in found), default=None),
        boxes=[Box(xyxy=f.box, label=f.label, score=f.score) for f in found],
        mask_keys=keys,
        data={"target": target, "detector": model, "threshold": DETECT_THRESHOLD},
        elapsed_s=elapsed_s,
    )


def _finder(store: ImageStore, predictor: Segmenter | None,
            detector: Any) -> Callable[[FindArgs], Evidence]:
    """``find`` over ``store``: ``detector`` (an ``HfDetector``) or, if None, the lungs only."""

    def find_tool(args: FindArgs) -> Evidence:
        model = predictor or get_predictor()
        # Text is the OCR's job, with or without a detector.
        if _SYNONYMS.get(_key(args.target)) == "text":
            img = store.get(args.image_id)
            frames = int(img.pixels.shape[0]) if img.pixels.ndim > img.display.ndim else 1
            return text_find_evidence(img.display, args.image_id, frames)
        if detector is not None:
            img = store.get(args.image_id)
            t0 = time.perf_counter()
            hits = find_phrase(img.display, args.target, detector, model, args.image_id)
            return phrase_evidence(hits, " ".join(args.target.split()), store, args.image_id,
                                   detector.name, time.perf_counter() - t0)
        target = normalise_target(args.target)  # refuse before touching the image or model
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        found = find_lungs(img.display, model, args.image_id, img.meta)
        return find_evidence(found, target, store, args.image_id, time.perf_counter() - t0)

    return find_tool


def _lungs_models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    return (LUNGS_FINDER, segmenter_need(config), RAPIDOCR)


def _open_vocab_models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    return (*filter(None, [configured_detector(config)]), segmenter_need(config), RAPIDOCR)


_FIND_EXAMPLES = ("Where are the lungs?",
                  "Outline the right lung.",
                  "Locate the left lung on this radiograph.")

TOOLS = (
    ToolSpec(
        name="find", description=_find_description(False), args=FindArgs, variant="lungs",
        build=lambda deps: _finder(deps.store, segmenter_for(deps.vision), None),
        models=_lungs_models, examples=_FIND_EXAMPLES, domain=FRONTAL_CHEST_RADIOGRAPH,
        # No enum of targets: offered "lungs", the small planner called find again with each
        # target in turn until the round budget ran out ("Is there fluid in the lungs?").
        targets=tuple(_SYNONYMS),
    ),
    # A configured open-vocabulary detector (MEDLOOP_DETECTOR=hf:...) grounds any phrase, so
    # it outranks the packaged lungs-only finder.
    ToolSpec(
        name="find", description=_find_description(True), args=FindArgs,
        variant="open-vocabulary", precedence=10,
        enabled=lambda deps: deps.vision.detector.startswith("hf:"),
        build=lambda deps: _finder(deps.store, segmenter_for(deps.vision),
                                   detector_for(deps.vision)),
        models=_open_vocab_models, examples=_FIND_EXAMPLES,
        domain=Domain(validated_on="whatever the configured open-vocabulary detector was "
                                   "trained on (medloop cannot know: its scores say)"),
    ),
)
"""``find``: the packaged lungs finder, or a configured open-vocabulary detector."""


def find_tools(store: ImageStore, predictor: Segmenter | None = None,
               detector: Any = None) -> list[BaseTool]:
    """The ``find`` tool over images in ``store``; models load on the first call.

    ``detector`` (an ``HfDetector``) makes it open-vocabulary; without one only the lungs are
    groundable (lungs-finder + the segmenter, ``predictor``: default the shared LiteMedSAM).
    """
    spec = TOOLS[1] if detector is not None else TOOLS[0]
    return [spec.bind(_finder(store, predictor, detector), store)]
