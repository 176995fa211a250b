"""GPU-path vision models through transformers, by hub id or local folder.

SAM-family segmentation (SAM / MedSAM as ``SamModel``, SAM 2 as ``Sam2Model``), and
open-vocabulary detection (OWLv2 / OWL-ViT, Grounding DINO).

None of these weights ship in a package, so none is a default: they are chosen with
``MEDLOOP_SEGMENTER=hf:...`` / ``MEDLOOP_DETECTOR=hf:...`` (``tools.models.registry.VisionConfig``).
Each model loads on first use, once per process (``tools.models.registry.load_once``), on CUDA when
available. A checkpoint that is missing offline, or of an unsupported type, raises
``ToolFailure`` naming it: the planner cannot fix a setup problem by retrying.

Formats: ``display`` is uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB; boxes are
``[x0, y0, x1, y1]`` pixels of the display (XYXY); points ``(x, y)`` pixels; masks come back
bool ``(H, W)`` in the display's grid. The processors do their model's own resizing: SAM
resizes the longest side to its input size and pads (aspect kept), SAM 2 resizes to its square
input as it was trained (its processor maps prompts and masks back), OWLv2 pads to a square
before resizing (so its boxes are mapped back through that square), Grounding DINO resizes
keeping the aspect ratio.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.errors import ToolFailure
from tools.image import to_rgb
from tools.models.lazy import EmbeddingCache, LazyModel

__all__ = ["Detection", "HfDetector", "HfSamSegmenter", "from_pretrained"]

# Detectors' boxes overlapping more than this (IoU) with a better box of the same label are
# duplicates: OWLv2 in particular proposes one box per patch.
_NMS_IOU = 0.5


def from_pretrained(kind: str, ref: str, load: Any) -> Any:
    """``load(ref)`` (a transformers ``from_pretrained``), or ``ToolFailure`` naming ``kind``.

    Offline, a hub id missing from the local cache fails here: the message says so in one line
    instead of the library's page of advice about network access.
    """
    try:
        return load(ref)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolFailure(f"{kind} {ref!r} could not be loaded (not available offline, or "
                          f"not a transformers checkpoint): {first}") from exc


# =============================================================================================
# SAM-family segmentation
# =============================================================================================
@dataclass
class _SamEntry:
    embedding: Any  # SAM: (1, C, h, w); SAM 2: a list of feature maps; on the model's device
    original: tuple[int, int]  # (H, W) of the display
    reshaped: tuple[int, int]  # (h, w) after SAM's longest-side resize (SAM 2: unused)


def _load_sam(ref: str, device: str) -> tuple[Any, Any, str]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import AutoConfig, Sam2Model, Sam2Processor, SamModel, SamProcessor

    cfg = from_pretrained("segmenter", ref, AutoConfig.from_pretrained)
    classes: dict[str, tuple[Any, Any]] = {"sam": (SamModel, SamProcessor),
                                           "sam2": (Sam2Model, Sam2Processor)}
    if cfg.model_type not in classes:
        raise ToolFailure(f"segmenter {ref!r} is a {cfg.model_type!r} model; MEDLOOP_SEGMENTER "
                          "needs a SAM or SAM 2 checkpoint in transformers format")
    model_cls, processor_cls = classes[cfg.model_type]
    model = from_pretrained("segmenter", ref, model_cls.from_pretrained).to(device).eval()
    processor = from_pretrained("segmenter", ref, processor_cls.from_pretrained)
    return model, processor, str(cfg.model_type)


class HfSamSegmenter(LazyModel[tuple[Any, Any, str]]):
    """Box- and point-prompted segmentation with transformers SAM-family models.

    ``SamModel`` (SAM, MedSAM) or ``Sam2Model`` (SAM 2), told apart by the checkpoint's config.

    Same interface as ``tools.models.medsam.MedSamPredictor``: the image embedding is cached per
    image id, so further prompts on one image only run the prompt encoder and mask decoder;
    ``encoder_calls`` counts image-encoder runs.
    """

    kind = "hf-sam"
    supports_points = True

    def __init__(self, ref: str, device: str = "auto", cache_size: int = 8) -> None:
        super().__init__(ref, device)
        self.name = f"hf:{ref}"
        self._embeddings: EmbeddingCache[_SamEntry] = EmbeddingCache(cache_size)
        self._lock = threading.RLock()

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far (each cache miss is one)."""
        return self._embeddings.computed

    def _load(self) -> tuple[Any, Any, str]:
        return _load_sam(self.ref, self.device)

    def _model(self) -> tuple[Any, Any, str]:
        return self.model()

    def _encode(self, image_id: str | None, display: np.ndarray) -> _SamEntry:
        import torch

        def compute() -> _SamEntry:
            model, processor, kind = self._model()
            inputs = processor(images=to_rgb(display), return_tensors="pt")
            with torch.inference_mode():
                emb = model.get_image_embeddings(inputs["pixel_values"].to(self.device))
            oh, ow = (int(v) for v in inputs["original_sizes"][0])
            rh, rw = ((int(v) for v in inputs["reshaped_input_sizes"][0]) if kind == "sam"
                      else (oh, ow))
            return _SamEntry(embedding=emb, original=(oh, ow), reshaped=(rh, rw))

        with self._lock:
            return self._embeddings.get(image_id, display, compute)

    def predict(self, image_id: str | None, display: np.ndarray,
                box_xyxy: Sequence[float]) -> tuple[np.ndarray, float]:
        """Mask and predicted IoU for a box prompt (XYXY pixels of ``display``)."""
        return self.predict_points(image_id, display, [], [], box_xyxy)

    def predict_points(
        self,
        image_id: str | None,
        display: np.ndarray,
        points_xy: Sequence[Sequence[float]],
        labels: Sequence[int],
        box_xyxy: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Mask and predicted IoU for point prompts, optionally with a box.

        Labels: 1 = on the object, 0 = background. Returns bool ``(H, W)`` and the IoU
        estimate clipped to [0, 1].
        """
        import torch

        entry = self._encode(image_id, display)
        model, processor, kind = self._model()
        (oh, ow), (rh, rw) = entry.original, entry.reshaped
        # SAM: prompts scale like the longest-side resize. SAM 2: the processor normalises
        # them from the original size (its input is a stretched square), so pass them as is.
        sx, sy = (rw / ow, rh / oh) if kind == "sam" else (1.0, 1.0)
        prompts: dict[str, Any] = {}
        if box_xyxy is not None:
            x0, y0, x1, y1 = (float(v) for v in box_xyxy)
            prompts["input_boxes"] = [[[x0 * sx, y0 * sy, x1 * sx, y1 * sy]]]
        if len(points_xy):
            prompts["input_points"] = [[[[float(p[0]) * sx, float(p[1]) * sy]
                                         for p in points_xy]]]  # (1, 1, N, 2)
            prompts["input_labels"] = [[[int(v) for v in labels]]]
        if not prompts:
            raise ValueError("a box or at least one point is needed")
        if kind == "sam2":
            enc = processor(original_sizes=[[oh, ow]], return_tensors="pt", **prompts)
            kwargs = {k: enc[k].to(self.device) for k in prompts}
        else:
            kwargs = {k: torch.tensor(v, device=self.device) for k, v in prompts.items()}
        with self._lock, torch.inference_mode():
            out = model(image_embeddings=entry.embedding, multimask_output=False, **kwargs)
            if kind == "sam2":
                masks = processor.post_process_masks(out.pred_masks.cpu(),
                                                     torch.tensor([[oh, ow]]))
            else:
                masks = processor.image_processor.post_process_masks(
                    out.pred_masks.cpu(), torch.tensor([[oh, ow]]), torch.tensor([[rh, rw]]),
                )  # list of (1, 1, H, W) bool
        mask = np.asarray(masks[0][0, 0].numpy(), dtype=bool)
        return mask, float(np.clip(float(out.iou_scores.reshape(-1)[0]), 0.0, 1.0))

    def clear(self) -> None:
        """Forget every cached embedding."""
        self._embeddings.clear()


# =============================================================================================
# Open-vocabulary detection
# =============================================================================================
@dataclass(frozen=True)
class Detection:
    """One detected box: XYXY pixels of the display, the phrase it matches, the score [0, 1]."""

    box: tuple[float, float, float, float]
    label: str
    score: float


_DETECTOR_TYPES = ("owlv2", "owlvit", "grounding-dino")


def _load_detector(ref: str, device: str) -> tuple[Any, Any, str]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

    cfg = from_pretrained("detector", ref, AutoConfig.from_pretrained)
    if cfg.model_type not in _DETECTOR_TYPES:
        raise ToolFailure(f"detector {ref!r} is a {cfg.model_type!r} model; MEDLOOP_DETECTOR "
                          f"needs one of {', '.join(_DETECTOR_TYPES)}")
    model = from_pretrained("detector", ref,
                             AutoModelForZeroShotObjectDetection.from_pretrained)
    processor = from_pretrained("detector", ref, AutoProcessor.from_pretrained)
    return model.to(device).eval(), processor, str(cfg.model_type)


class HfDetector(LazyModel[tuple[Any, Any, str]]):
    """Boxes with scores for free-text phrases, from OWLv2 / OWL-ViT or Grounding DINO."""

    kind = "hf-det"

    def __init__(self, ref: str, device: str = "auto") -> None:
        super().__init__(ref, device)
        self.name = f"hf:{ref}"

    def _load(self) -> tuple[Any, Any, str]:
        return _load_detector(self.ref, self.device)

    def _model(self) -> tuple[Any, Any, str]:
        return self.model()

    def detect(self, display: np.ndarray, phrases: Sequence[str], threshold: float = 0.2,
               max_boxes: int = 10) -> list[Detection]:
        """Boxes scoring at least ``threshold`` for any of ``phrases``, best first.

        Duplicates (IoU > 0.5 with a better box of the same phrase) are suppressed; boxes are
        clipped to the image and empty ones dropped.
        """
        phrases = [p.strip().rstrip(".").lower() for p in phrases if p.strip()]
        if not phrases:
            raise ValueError("no phrase to detect")
        model, processor, kind = self._model()
        rgb = to_rgb(display)
        h, w = rgb.shape[:2]
        raw: list[tuple[list[float], str, float]] = []
        if kind == "grounding-dino":
            # One phrase per pass: every box then belongs to that phrase, with no parsing of
            # token spans back into phrases.
            for phrase in phrases:
                out, inputs = self._run(model, processor, text=f"{phrase}.", images=rgb)
                res = processor.post_process_grounded_object_detection(
                    out, inputs["input_ids"], threshold=threshold, text_threshold=threshold,
                    target_sizes=[(h, w)],
                )[0]
                raw += [(b, phrase, float(s)) for b, s in
                        zip(res["boxes"].tolist(), res["scores"].tolist(), strict=True)]
        else:
            out, _inputs = self._run(model, processor, text=[phrases], images=rgb)
            # OWLv2 pads the image to a square (bottom/right) before resizing: its normalised
            # boxes are relative to that square. OWL-ViT resizes without padding.
            size = (max(h, w), max(h, w)) if kind == "owlv2" else (h, w)
            res = processor.post_process_grounded_object_detection(
                out, threshold=threshold, target_sizes=[size], text_labels=[phrases],
            )[0]
            raw += [(b, phrases[int(i)], float(s)) for b, i, s in
                    zip(res["boxes"].tolist(), res["labels"].tolist(), res["scores"].tolist(),
                        strict=True)]
        return _suppress(raw, w, h, max_boxes)

    def _run(self, model: Any, processor: Any, **inputs: Any) -> tuple[Any, Any]:
        import torch

        enc = processor(return_tensors="pt", **inputs)
        with torch.inference_mode():
            out = model(**enc.to(self.device))
        return out, enc


def _suppress(raw: list[tuple[list[float], str, float]], w: int, h: int,
              max_boxes: int) -> list[Detection]:
    """Clip to the image, drop empty boxes, per-phrase NMS, best ``max_boxes`` first."""
    import torch

    from tools.torch_compat import nms_reference

    kept: list[Detection] = []
    for label in sorted({r[1] for r in raw}):
        items = []
        for b, lab, s in raw:
            if lab != label:
                continue
            x0, y0 = min(max(b[0], 0.0), w), min(max(b[1], 0.0), h)
            x1, y1 = min(max(b[2], 0.0), w), min(max(b[3], 0.0), h)
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                items.append(((x0, y0, x1, y1), s))
        if not items:
            continue
        boxes = torch.tensor([i[0] for i in items], dtype=torch.float32)
        scores = torch.tensor([i[1] for i in items], dtype=torch.float32)
        for k in nms_reference(boxes, scores, _NMS_IOU).tolist():
            (x0, y0, x1, y1), s = items[k]
            kept.append(Detection(box=(round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)),
                                  label=label, score=float(np.clip(s, 0.0, 1.0))))
    kept.sort(key=lambda d: -d.score)
    return kept[:max_boxes]
