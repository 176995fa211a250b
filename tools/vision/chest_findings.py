"""``classify`` by a TorchXRayVision chest X-ray classifier: 18 findings on a frontal film.

Offered when ``MEDLOOP_CLASSIFIER=xrv:WEIGHTS`` (``xrv:densenet121-res224-all``,
``xrv:resnet50-res512-all``, the single-dataset DenseNets...; ``tools.models.xrv``), in place
of the case library's kNN ``classify`` (precedence 10, as the other configured classifiers; the
one setting can name only one of them). It takes only the image: the labels are the model's.

What the numbers are (said in every summary, because a planner reads "0.7" as 70 %): each
label's score is torchxrayvision's output, the sigmoid rescaled so that the label's operating
threshold (Youden's J on held-out training-site data) sits at 0.5. Above 0.5 = above the
operating point, reported ``present``; the score is not a calibrated probability of disease.
The raw sigmoid and the threshold ride along in ``data``. Each judged label is an
``Assertion`` (finding, present, probability = the score) for the meaning check.

Domain: frontal (PA/AP) chest radiographs, what every weight set was trained on. A CT, an MR,
a film of another body part or a lateral view is refused before the model runs, with the
reason; a picture without DICOM tags (a JPEG) runs flagged.

With ``heatmap``, a Grad-CAM map of the top finding is stored as a new image (the film under
a colour map), so the UI and the planner can show where the score comes from.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import CHEST_PARTS, RADIOGRAPH_MODALITIES, Domain
from tools.evidence import Assertion, Evidence
from tools.image import LoadedImage, to_rgb
from tools.models.registry import configured_classifier
from tools.models.xrv import ChestFindings, Finding, XrvClassifier, classifier_for
from tools.spec import ModelNeed, ToolDeps, ToolSpec, VisionConfig
from tools.store import ImageStore

__all__ = ["CHEST_FINDINGS_EXAMPLES", "FRONTAL_CHEST", "TOOLS", "ChestFindingsArgs",
           "chest_findings_evidence", "heatmap_image"]

FRONTAL_CHEST = Domain(
    validated_on="frontal (PA/AP) chest radiographs (every TorchXRayVision weight set was "
                 "trained on them: NIH, CheXpert, MIMIC-CXR, PadChest...)",
    modalities=RADIOGRAPH_MODALITIES,
    body_parts=CHEST_PARTS,
    projections=frozenset({"PA", "AP"}),
    grey_only=True, outside="refuse", unknown="flag",
    why="its 18 labels are chest findings learnt from frontal films: on a CT, an MR, another "
        "body part or a lateral view the scores are noise that reads like findings, so it is "
        "refused with the reason; a picture without DICOM tags runs flagged")
"""Where the chest X-ray findings classifier (and the anatomy segmenter) are valid."""

CHEST_FINDINGS_EXAMPLES = (
    "Is there a pleural effusion on this chest X-ray?",
    "Does this radiograph show pneumonia or consolidation?",
    "What findings are on this chest film?",
    "Is there a pneumothorax?",
)
"""The router's questions for the chest findings ``classify``."""

# Below-threshold labels named in the summary (the planner reads the first few best).
_SHOWN_BELOW = 3
# Opacity of the heat map over the film.
_HEAT_ALPHA = 0.45


class ChestFindingsArgs(ImageArgs):
    """Arguments of the chest findings ``classify``."""

    heatmap: bool = Field(default=False,
                          description="also store a heat map of where the top finding's score "
                                      "comes from, as a new image id")


_DESCRIPTION = (
    "Chest X-ray findings classifier (TorchXRayVision) for a frontal chest radiograph: scores "
    "18 findings (atelectasis, consolidation, pneumonia, effusion, pneumothorax, edema, "
    "cardiomegaly, nodule, mass, fracture, lung opacity...) and says which are above the "
    "model's operating point. Takes the image id; heatmap=true also stores where the top "
    "finding's score comes from."
)


def heatmap_image(img: LoadedImage, heat: np.ndarray, label: str, image_id: str
                  ) -> LoadedImage:
    """The film with ``heat`` (``(H, W)`` in [0, 1]) over it as a colour map, to store.

    Its metadata names what it is and not a modality: it is a picture about the film, not a
    film, so tools that read modality values do not take it for one.
    """
    import cv2

    rgb = to_rgb(img.display).astype(np.float32)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = _HEAT_ALPHA * heat[..., None]
    shown = np.round(rgb * (1 - weight) + colour * weight).astype(np.uint8)
    meta = {"derived_from": image_id, "heatmap": f"Grad-CAM of {label}"}
    return LoadedImage(pixels=shown, display=shown, spacing_mm=img.spacing_mm,
                       spacing_source=img.spacing_source, meta=meta, source_format="derived",
                       notes=[f"Grad-CAM heat map of {label} over {image_id}"])


def _listed(fs: list[Finding]) -> str:
    return ", ".join(f"{f.name} {f.score:.2f}" for f in fs)


def chest_findings_evidence(res: ChestFindings, image_id: str, heat_id: str | None = None,
                            heat_key: str | None = None, elapsed_s: float = 0.0) -> Evidence:
    """Evidence of one reading: present and near findings, what the scores are, assertions."""
    present = [f for f in res.findings if f.present]
    below = [f for f in res.findings if not f.present][:_SHOWN_BELOW]
    parts = [f"above the operating point: {_listed(present)}" if present
             else "no finding above its operating point"]
    if below:
        parts.append(f"highest below: {_listed(below)}")
    parts.append("scores are TorchXRayVision's operating-point-normalised sigmoids (0.5 = "
                 "each finding's threshold on held-out data), not calibrated probabilities")
    if res.not_judged:
        parts.append(f"not judged by these weights: {', '.join(res.not_judged)}")
    if heat_id is not None and res.findings:
        parts.append(f"heat map of {res.findings[0].name}: image {heat_id}")
    top = round(min(max(res.findings[0].score, 0.0), 1.0), 4) if res.findings else None
    return Evidence(
        tool="classify", image_id=image_id,
        summary=f"chest X-ray findings (xrv:{res.weights}): " + "; ".join(parts) + ".",
        score=top,
        assertions=[Assertion(finding=f.name, present=f.present,
                              probability=round(min(max(f.score, 0.0), 1.0), 4))
                    for f in res.findings],
        new_image_ids=[heat_id] if heat_id else [],
        data={"model": f"xrv:{res.weights}",
              "score_kind": "operating-point-normalised sigmoid (0.5 = threshold)",
              "labels": [f.label for f in res.findings],
              "scores": [round(f.score, 4) for f in res.findings],
              "sigmoids": [round(f.sigmoid, 4) for f in res.findings],
              "thresholds": [round(f.threshold, 6) for f in res.findings],
              "ppv80": [f.ppv80 for f in res.findings],
              "not_judged": res.not_judged, "input": res.source,
              "heatmap_image_id": heat_id, "heatmap_key": heat_key},
        elapsed_s=elapsed_s,
    )


def _classifier(store: ImageStore, classifier: XrvClassifier
                ) -> Callable[[ChestFindingsArgs], Evidence]:
    def classify_tool(args: ChestFindingsArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        res = classifier.classify(img, heatmap=args.heatmap)
        heat_id = heat_key = None
        if res.heatmap is not None and res.findings:
            heat_key = store.put_array(res.heatmap.astype(np.float16),
                                       key=f"heat-{uuid.uuid4().hex[:12]}")
            heat_id = store.put(heatmap_image(img, res.heatmap, res.findings[0].name,
                                              args.image_id)).id
        return chest_findings_evidence(res, args.image_id, heat_id, heat_key,
                                       time.perf_counter() - t0)

    return classify_tool


def _models(config: VisionConfig) -> tuple[ModelNeed, ...]:
    need = configured_classifier(config)
    return (need,) if need is not None else ()


def _build(deps: ToolDeps) -> Callable[[ChestFindingsArgs], Evidence]:
    classifier = classifier_for(deps.vision)
    if classifier is None:
        raise ValueError("the chest findings classify needs classifier = 'xrv:WEIGHTS'")
    return _classifier(deps.store, classifier)


TOOLS = (
    ToolSpec(
        name="classify", description=_DESCRIPTION, args=ChestFindingsArgs, variant="xrv",
        precedence=10,
        enabled=lambda deps: bool(deps.vision.classifier
                                  and deps.vision.classifier.startswith("xrv:")),
        build=_build, models=_models, examples=CHEST_FINDINGS_EXAMPLES, domain=FRONTAL_CHEST,
    ),
)
"""``classify`` by a TorchXRayVision classifier (``MEDLOOP_CLASSIFIER=xrv:WEIGHTS``)."""
