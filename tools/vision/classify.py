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
from collections.abc import Callable

from langchain_core.tools import BaseTool
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import Domain
from tools.evidence import Assertion, Evidence
from tools.models.classifiers import (
    MAX_LABELS as MAX_LABELS,
)
from tools.models.classifiers import (
    ClassScore,
    SupervisedClassifier,
    ZeroShotClassifier,
    clean_labels,
)
from tools.models.registry import configured_classifier
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







class ClassifyArgs(ImageArgs):
    """Arguments of ``classify``."""

    labels: list[str] = Field(
        min_length=2, max_length=MAX_LABELS,
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
    return [ZERO_SHOT.bind(_zero_shot(store, classifier), store)]


# =============================================================================================
# Supervised classifiers (transformers)
# =============================================================================================
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
        shown = scores[:MAX_LABELS]
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
    return [SUPERVISED.bind(_supervised(store, classifier), store)]


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


CONFIGURED_MODEL = Domain(
    validated_on="whatever the configured classifier was trained on (its model card says; "
                 "medloop cannot check it)",
    why="the probabilities are the evidence's score; a site that configures a model vouches "
        "for its domain")

# A configured classifier (MEDLOOP_CLASSIFIER) outranks the case library's kNN ``classify``
# (precedence 0, ``retrievers.knn_classify``); the two kinds exclude each other by prefix.
ZERO_SHOT = ToolSpec(
    name="classify", description=_CLASSIFY, args=ClassifyArgs, variant="open_clip",
    precedence=10, enabled=lambda deps: _configured(deps, "open_clip:"),
    build=lambda deps: _zero_shot(deps.store, ZeroShotClassifier(str(deps.vision.classifier),
                                                                 deps.device)),
    models=_classifier_models, examples=CLASSIFY_EXAMPLES, domain=CONFIGURED_MODEL,
)
SUPERVISED = ToolSpec(
    name="classify", description=_SUPERVISED, args=ImageArgs, variant="hf",
    precedence=10, enabled=lambda deps: _configured(deps, "hf:"),
    build=lambda deps: _supervised(deps.store, SupervisedClassifier(str(deps.vision.classifier),
                                                                    deps.device)),
    models=_classifier_models, examples=CLASSIFY_EXAMPLES, domain=CONFIGURED_MODEL,
)
TOOLS = (ZERO_SHOT, SUPERVISED)
"""``classify`` by a configured model: zero-shot open_clip or a supervised transformers one."""
