"""Image classifiers as model adapters: open_clip zero-shot and transformers supervised.

The models behind the configured ``classify`` backends (``tools.vision.classify`` holds the
tools). Both load on first use, once per process (``tools.models.lazy.LazyModel``), on the
device the run asks for. ``ClassScore`` is what either returns; ``clean_labels`` checks a
zero-shot label list (a softmax over one label is always 1, which says nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.errors import ToolFailure, ToolInputError
from tools.models.hf import from_pretrained
from tools.models.lazy import LazyModel
from tools.models.registry import open_clip_ref

__all__ = ["MAX_LABELS", "TEMPLATE", "ClassScore", "SupervisedClassifier", "ZeroShotClassifier",
           "clean_labels"]

TEMPLATE = "a medical image showing {}."
MAX_LABELS = 12


@dataclass(frozen=True)
class ClassScore:
    """A candidate label and its probability among the candidates, in [0, 1]."""

    label: str
    probability: float


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Distinct, non-empty labels (2 to 12), or ``ToolInputError`` saying what is wrong.

    One label is refused: a softmax over one label is always 1, which says nothing.
    """
    out: list[str] = []
    for lab in labels:
        s = " ".join(str(lab).split())
        if s and s.lower() not in (o.lower() for o in out):
            out.append(s)
    if not 2 <= len(out) <= MAX_LABELS:
        raise ToolInputError(f"give 2 to {MAX_LABELS} distinct candidate labels (e.g. "
                             f"['pneumonia', 'normal chest']); got {len(out)}")
    return out


def _load_open_clip(ref: str, device: str) -> tuple[Any, Any, Any]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(ref, device=device)
        tokenizer = open_clip.get_tokenizer(ref)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolFailure(f"classifier {ref!r} could not be loaded (not available offline, "
                          f"or not an open_clip model): {first}") from exc
    return model.eval(), preprocess, tokenizer


class ZeroShotClassifier(LazyModel[tuple[Any, Any, Any]]):
    """An open_clip model used as a zero-shot classifier; loads on first use, once per process."""

    kind = "open_clip"

    def __init__(self, spec: str, device: str = "auto", template: str = TEMPLATE) -> None:
        super().__init__(open_clip_ref(spec), device)
        self.template = template
        self.name = f"open_clip:{self.ref}"

    def _load(self) -> tuple[Any, Any, Any]:
        return _load_open_clip(self.ref, self.device)

    def classify(self, display: np.ndarray, labels: Sequence[str]) -> list[ClassScore]:
        """Probabilities of ``labels`` for ``display`` (uint8 grey or RGB), best first."""
        import torch
        from PIL import Image

        from tools.image import to_rgb

        labels = clean_labels(labels)
        model, preprocess, tokenizer = self.model()
        image = preprocess(Image.fromarray(to_rgb(display))).unsqueeze(0).to(self.device)
        text = tokenizer([self.template.format(lab) for lab in labels]).to(self.device)
        with torch.inference_mode():
            img = model.encode_image(image)
            txt = model.encode_text(text)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            probs = (model.logit_scale.exp() * img @ txt.T).softmax(dim=-1)[0]
        scores = [ClassScore(lab, float(p)) for lab, p in zip(labels, probs.tolist(), strict=True)]
        return sorted(scores, key=lambda c: -c.probability)


# =============================================================================================
# Supervised classifiers (transformers)
# =============================================================================================
def _load_supervised(ref: str, device: str) -> tuple[Any, Any]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = from_pretrained("classifier", ref, AutoModelForImageClassification.from_pretrained)
    processor = from_pretrained("classifier", ref, AutoImageProcessor.from_pretrained)
    return model.to(device).eval(), processor


class SupervisedClassifier(LazyModel[tuple[Any, Any]]):
    """A transformers image classifier; loads on first use, once per process.

    Probabilities: ``sigmoid`` per label for a multi-label model (each is that finding's own
    probability, so several can be high), ``softmax`` otherwise (they sum to 1 over the model's
    labels). The image goes through the checkpoint's own image processor.
    """

    kind = "hf-cls"

    def __init__(self, spec: str, device: str = "auto") -> None:
        super().__init__(spec.removeprefix("hf:"), device)
        self.name = f"hf:{self.ref}"

    def _load(self) -> tuple[Any, Any]:
        return _load_supervised(self.ref, self.device)

    def multi_label(self) -> bool:
        """Whether the model scores each label on its own (sigmoid) rather than by softmax."""
        model, _ = self._loaded()
        return getattr(model.config, "problem_type", None) == "multi_label_classification"

    def _loaded(self) -> tuple[Any, Any]:
        return self.model()

    def classify(self, display: np.ndarray) -> list[ClassScore]:
        """Every label's probability for ``display`` (uint8 grey or RGB), best first."""
        import torch

        from tools.image import to_rgb

        model, processor = self._loaded()
        inputs = processor(images=to_rgb(display), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = model(**inputs).logits[0].float()
        probs = logits.sigmoid() if self.multi_label() else logits.softmax(dim=-1)
        id2label = model.config.id2label
        scores = [ClassScore(str(id2label.get(i, f"label {i}")), float(p))
                  for i, p in enumerate(probs.tolist())]
        return sorted(scores, key=lambda c: -c.probability)
