"""Image classification by configuration: zero-shot (open_clip) or a supervised classifier.

Two kinds of model can serve ``classify``:

* ``MEDLOOP_CLASSIFIER=hf:ID_OR_PATH`` — a supervised image classifier in transformers format
  (``AutoModelForImageClassification``: ViT, ConvNeXt, DenseNet-style fine-tunes); its own
  labels (``config.id2label``), sigmoid per label when ``problem_type`` is
  ``multi_label_classification`` (findings that can co-occur), else a softmax.
* ``MEDLOOP_CLASSIFIER=open_clip:REF`` — zero-shot, described below.

No image-text weights ship in a package, so this is not a default: it is offered when
``MEDLOOP_CLASSIFIER=open_clip:REF`` names a model (``tools.models.registry.VisionConfig``),
where REF
is ``hf-hub:ORG/NAME`` (e.g. ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``,
from the local hub cache when offline), ``local-dir:PATH`` or a folder holding
``open_clip_config.json`` and the weights. The CPU default classifier is the nearest-neighbour
one over the case library (``retrievers/``).

Method (CLIP's): the image and one prompt per candidate label ("a medical image showing
{label}.") are embedded, L2-normalised, and the model's ``logit_scale`` times their cosine
similarities goes through a softmax. So the probabilities are RELATIVE among the labels given:
they sum to 1 and say which label fits best, not whether any finding is present at all.
The image goes through the model's own preprocessing (resize + centre crop + normalise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Assertion, Evidence
from tools.models.registry import (
    configured_classifier,
    load_once,
    open_clip_ref,
    resolve_device,
)
from tools.spec import ModelNeed, ToolDeps, ToolSpec, VisionConfig
from tools.store import ImageStore

__all__ = [
    "CLASSIFY_EXAMPLES",
    "SUPERVISED",
    "TOOLS",
    "ZERO_SHOT",
    "ClassScore",
    "SupervisedClassifier",
    "ZeroShotClassifier",
    "classify_tools",
    "clean_labels",
    "supervised_classify_tools",
]

TEMPLATE = "a medical image showing {}."
_MAX_LABELS = 12


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
    if not 2 <= len(out) <= _MAX_LABELS:
        raise ToolInputError(f"give 2 to {_MAX_LABELS} distinct candidate labels (e.g. "
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


class ZeroShotClassifier:
    """An open_clip model used as a zero-shot classifier; loads on first use, once per process."""

    def __init__(self, spec: str, device: str = "auto", template: str = TEMPLATE) -> None:
        self.ref = open_clip_ref(spec)
        self.device = resolve_device(device)
        self.template = template
        self.name = f"open_clip:{self.ref}"

    @property
    def key(self) -> str:
        """The registry key this model is cached under."""
        return f"open_clip:{self.ref}:{self.device}"

    def classify(self, display: np.ndarray, labels: Sequence[str]) -> list[ClassScore]:
        """Probabilities of ``labels`` for ``display`` (uint8 grey or RGB), best first."""
        import torch
        from PIL import Image

        from tools.image import to_rgb

        labels = clean_labels(labels)
        model, preprocess, tokenizer = load_once(
            self.key, lambda: _load_open_clip(self.ref, self.device))
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


class ClassifyArgs(ImageArgs):
    """Arguments of ``classify``."""

    labels: list[str] = Field(
        min_length=2, max_length=_MAX_LABELS,
        description="2-12 candidate findings to choose between, e.g. ['pneumonia', 'normal']",
    )


_CLASSIFY = (
    "Zero-shot classification of the whole image among candidate findings you list (an "
    "image-text model): returns each label's probability RELATIVE to the others (they sum to "
    "1). Use to weigh alternatives such as ['pneumonia', 'pleural effusion', 'normal']."
)


def _zero_shot(store: ImageStore, classifier: ZeroShotClassifier
               ) -> Callable[[ClassifyArgs], Evidence]:
    def classify_tool(args: ClassifyArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        scores = classifier.classify(img.display, args.labels)
        listed = ", ".join(f"{c.label} {c.probability:.2f}" for c in scores)
        summary = (f"zero-shot ({classifier.name}): {listed}; probabilities are relative among "
                   "these labels, not evidence that any of them is present.")
        return Evidence(
            tool="classify", image_id=args.image_id, summary=summary,
            score=scores[0].probability,
            assertions=[Assertion(finding=c.label, present=c.probability >= 0.5,
                                  probability=c.probability) for c in scores],
            data={"model": classifier.name, "labels": [c.label for c in scores],
                  "probabilities": [round(c.probability, 4) for c in scores]},
            elapsed_s=time.perf_counter() - t0,
        )

    return classify_tool


def classify_tools(store: ImageStore, classifier: ZeroShotClassifier) -> list[BaseTool]:
    """The zero-shot ``classify`` tool over images in ``store`` (loads on the first call)."""
    return [ZERO_SHOT.bind(_zero_shot(store, classifier))]


# =============================================================================================
# Supervised classifiers (transformers)
# =============================================================================================
def _load_supervised(ref: str, device: str) -> tuple[Any, Any]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tools.models.hf import _from_pretrained

    model = _from_pretrained("classifier", ref, AutoModelForImageClassification.from_pretrained)
    processor = _from_pretrained("classifier", ref, AutoImageProcessor.from_pretrained)
    return model.to(device).eval(), processor


class SupervisedClassifier:
    """A transformers image classifier; loads on first use, once per process.

    Probabilities: ``sigmoid`` per label for a multi-label model (each is that finding's own
    probability, so several can be high), ``softmax`` otherwise (they sum to 1 over the model's
    labels). The image goes through the checkpoint's own image processor.
    """

    def __init__(self, spec: str, device: str = "auto") -> None:
        self.ref = spec.removeprefix("hf:")
        self.device = resolve_device(device)
        self.name = f"hf:{self.ref}"

    @property
    def key(self) -> str:
        """The registry key this model is cached under."""
        return f"hf-cls:{self.ref}:{self.device}"

    def multi_label(self) -> bool:
        """Whether the model scores each label on its own (sigmoid) rather than by softmax."""
        model, _ = self._loaded()
        return getattr(model.config, "problem_type", None) == "multi_label_classification"

    def _loaded(self) -> tuple[Any, Any]:
        return load_once(self.key, lambda: _load_supervised(self.ref, self.device))

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


_SUPERVISED = (
    "Classify the whole image with a trained classifier: returns the probability of each "
    "finding the model was trained on. Takes only the image id."
)


def _supervised(store: ImageStore, classifier: SupervisedClassifier
                ) -> Callable[[ImageArgs], Evidence]:
    def classify_tool(args: ImageArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        scores = classifier.classify(img.display)
        multi = classifier.multi_label()
        shown = scores[:_MAX_LABELS]
        listed = ", ".join(f"{c.label} {c.probability:.2f}" for c in shown)
        how = ("each label scored on its own (multi-label)" if multi
               else "probabilities sum to 1 over the model's labels")
        summary = f"classifier ({classifier.name}): {listed}; {how}."
        return Evidence(
            tool="classify", image_id=args.image_id, summary=summary,
            score=shown[0].probability if shown else None,
            assertions=[Assertion(finding=c.label, present=c.probability >= 0.5,
                                  probability=c.probability) for c in shown],
            data={"model": classifier.name, "multi_label": multi,
                  "labels": [c.label for c in scores],
                  "probabilities": [round(c.probability, 4) for c in scores]},
            elapsed_s=time.perf_counter() - t0,
        )

    return classify_tool


def supervised_classify_tools(store: ImageStore, classifier: SupervisedClassifier
                              ) -> list[BaseTool]:
    """The ``classify`` tool backed by a supervised model (loads on the first call)."""
    return [SUPERVISED.bind(_supervised(store, classifier))]


# =============================================================================================
# Declarations
# =============================================================================================
CLASSIFY_EXAMPLES = ("Which body part is this?",
                     "Is this a chest, abdomen or head image?",
                     "Classify this image by body region.",
                     "What kind of scan is this?")
"""The router's questions for ``classify``, whichever backend serves it."""


def _configured(deps: ToolDeps, prefix: str) -> bool:
    return bool(deps.vision.classifier and deps.vision.classifier.startswith(prefix))


def _classifier_models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    return tuple(filter(None, [configured_classifier(config)]))


# A configured classifier (MEDLOOP_CLASSIFIER) outranks the case library's kNN ``classify``
# (precedence 0, ``retrievers.knn_classify``); the two kinds exclude each other by prefix.
ZERO_SHOT = ToolSpec(
    name="classify", description=_CLASSIFY, args=ClassifyArgs, variant="open_clip",
    precedence=10, enabled=lambda deps: _configured(deps, "open_clip:"),
    build=lambda deps: _zero_shot(deps.store, ZeroShotClassifier(str(deps.vision.classifier),
                                                                 deps.device)),
    models=_classifier_models, examples=CLASSIFY_EXAMPLES,
)
SUPERVISED = ToolSpec(
    name="classify", description=_SUPERVISED, args=ImageArgs, variant="hf",
    precedence=10, enabled=lambda deps: _configured(deps, "hf:"),
    build=lambda deps: _supervised(deps.store, SupervisedClassifier(str(deps.vision.classifier),
                                                                    deps.device)),
    models=_classifier_models, examples=CLASSIFY_EXAMPLES,
)
TOOLS = (ZERO_SHOT, SUPERVISED)
"""``classify`` by a configured model: zero-shot open_clip or a supervised transformers one."""
