"""Nearest-neighbour classification from a case library: the CPU default ``classify``.

The image is embedded, its ``k`` most similar LABELLED library images are found, and each label
gets a probability = the similarity-weighted share of those neighbours that carry it
(similarities below 0 count as 0). So the probabilities are frequencies among neighbours, not
calibrated disease probabilities, and a label can only be predicted if the library has it: in
the demo library the image labels are body regions ("chest", "head"), not findings. With a
user library labelled with findings the same tool predicts findings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from retrievers.library import CaseHit, CaseLibrary
from retrievers.similar import LIBRARY_DOMAIN, default_library
from tools.base import ImageArgs
from tools.errors import ToolInputError
from tools.evidence import Assertion, Evidence
from tools.packaged import LITE_MEDSAM
from tools.spec import ToolSpec
from tools.store import ImageStore
from tools.vision.classify import CLASSIFY_EXAMPLES

__all__ = ["TOOLS", "KnnResult", "knn_classify", "knn_classify_tools"]


@dataclass(frozen=True)
class KnnResult:
    """Label probabilities (highest first) and the neighbours they came from."""

    probabilities: list[tuple[str, float]]
    neighbours: list[CaseHit]


def knn_classify(library: CaseLibrary, display: np.ndarray, k: int = 5) -> KnnResult:
    """Label probabilities for ``display`` (uint8) from its ``k`` nearest labelled images."""
    if k < 1:
        raise ToolInputError("k must be at least 1")
    if library.image_index is None or library.image_embedder is None:
        raise ToolInputError("the case library has no image index to classify with")
    labelled = [lab for lab in library.db.label_counts()]
    if not labelled:
        raise ToolInputError("the case library's images carry no labels to classify with")
    vec = library.image_embedder.embed_images([display])
    hits = [h for h in library.search_image(vector=vec, k=k, labels=labelled) if h.labels]
    weights = {h.case_id: max(h.score, 0.0) for h in hits}
    total = sum(weights.values())
    if not hits or total <= 0:
        return KnnResult([], hits)
    votes: dict[str, float] = {}
    for h in hits:
        for lab in h.labels:
            votes[lab] = votes.get(lab, 0.0) + weights[h.case_id]
    probs = sorted(((lab, v / total) for lab, v in votes.items()), key=lambda t: -t[1])
    return KnnResult([(lab, float(min(1.0, p))) for lab, p in probs], hits)


class KnnArgs(ImageArgs):
    """Arguments of the kNN ``classify``."""

    k: int = Field(default=5, ge=1, le=50, description="neighbours to vote (default 5)")


_DESCRIPTION = (
    "Classify the image by its nearest labelled cases in the case library (kNN over image "
    "embeddings): each label's probability is its similarity-weighted share among the "
    "neighbours. Labels are whatever the library's cases carry (body regions in the demo)."
)


def _knn(store: ImageStore, library: object) -> Callable[[KnnArgs], Evidence]:
    """kNN ``classify`` over ``store`` images; ``library`` as in ``knn_classify_tools``."""

    def classify(args: KnnArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        lib = library() if callable(library) else library
        if not isinstance(lib, CaseLibrary):
            raise TypeError("library must be a CaseLibrary or return one")
        res = knn_classify(lib, img.display, args.k)
        if res.probabilities:
            listed = ", ".join(f"{lab} {p:.2f}" for lab, p in res.probabilities[:6])
            summary = (f"kNN over {len(res.neighbours)} nearest labelled library images: "
                       f"{listed} (shares of similar cases' labels, not calibrated "
                       "probabilities).")
        else:
            summary = "kNN: no similar labelled case in the library; no label can be given."
        return Evidence(
            tool="classify", image_id=args.image_id, summary=summary,
            score=res.probabilities[0][1] if res.probabilities else 0.0,
            assertions=[Assertion(finding=lab, present=p >= 0.5, probability=p)
                        for lab, p in res.probabilities[:6]],
            data={"method": "knn", "k": args.k,
                  "labels": [lab for lab, _ in res.probabilities],
                  "probabilities": [round(p, 4) for _, p in res.probabilities],
                  "neighbours": [{"case_id": h.case_id, "score": round(h.score, 4),
                                  "labels": h.labels} for h in res.neighbours]},
            elapsed_s=time.perf_counter() - t0,
        )

    return classify


# The CPU default ``classify``: offered unless a configured classifier (precedence 10,
# ``tools.vision.classify``) outranks it. The library's images are embedded with LiteMedSAM.
TOOLS = (
    ToolSpec(
        name="classify", description=_DESCRIPTION, args=KnnArgs, variant="knn",
        build=lambda deps: _knn(deps.store, deps.library or default_library(deps.home)),
        models=(LITE_MEDSAM,), examples=CLASSIFY_EXAMPLES, domain=LIBRARY_DOMAIN,
    ),
)
"""``classify`` by the labels of the nearest library cases."""


def knn_classify_tools(store: ImageStore, library: object) -> list[BaseTool]:
    """``classify`` over ``store`` images.

    ``library`` is a ``CaseLibrary`` or a zero-argument callable returning one (so the library
    opens, or builds, on the first call).
    """
    return [TOOLS[0].bind(_knn(store, library), store)]
