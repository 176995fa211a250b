"""Agent tools on the case library: ``similar_cases`` and ``report_lookup``.

* ``similar_cases`` — the ``k`` library cases whose images are most similar to a stored image
  (LiteMedSAM embeddings, cosine), with their reports, labels and scores; each hit's thumbnail
  goes into the image store and its key into the evidence, so the app can draw it.
* ``report_lookup`` — knowledge lookup: the reports most similar to a finding or phrase the
  question names (MiniLM embeddings), with the sentence that matches best, and how many of
  them mention the phrase literally.

Both take the library lazily (a callable): by default the demo library (``retrievers.demo``),
or the library the run names (``AgentContext.library``), opened — or built, the first time — on
the first call, never when the graph is built.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from retrievers.library import CaseHit, CaseLibrary
from retrievers.metadata import decode_thumbnail
from retrievers.typicality import LIBRARY_IMAGES, flag_if_unlike, library_typicality
from tools.base import ImageArgs
from tools.domain import RADIOGRAPH_MODALITIES, Domain
from tools.errors import ResourceNotReady, ToolFailure, ToolInputError
from tools.evidence import Evidence
from tools.packaged import LITE_MEDSAM, MINILM
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore

__all__ = [
    "LIBRARY_DOMAIN",
    "REPORT_LOOKUP",
    "REPORT_WORDS",
    "SHIPPED_DOMAIN",
    "SIMILAR_CASES",
    "TOOLS",
    "best_sentence",
    "default_library",
    "retrieval_tools",
]

_REPORT_CHARS = 400

REPORT_WORDS = ("report", "reports", "reported", "reporting", "described", "wording",
                "terminology", "term", "terms", "phrase", "phrased", "sentence", "sentences",
                "usually", "typically", "typical")
"""What a question about how reports speak of a finding names. ``report_lookup`` is routed only
such questions (``ToolSpec.targets``), and its evidence speaks only to them (``data["about"]``,
``agent.trust.agreement.speaks_to``): other patients' report sentences are not evidence about
this image. Routed "Is the corpus callosum involved?", the small planner answered it from
report sentences alone (on 17 real items of the default configuration it was routed 11 % of
the questions, and gave answers from it alone on 8)."""


def default_library(home: str | Path | None = None,
                    path: str | Path | None = None) -> Callable[[], CaseLibrary]:
    """A callable giving the library at ``path`` if given, else the demo library under ``home``.

    The demo library is built once, in the background, the first time a tool asks for it;
    until it is done the callable raises ``ResourceNotReady`` (the planner is told to use other
    tools), so no tool call waits minutes for it.
    """

    def get() -> CaseLibrary:
        if path:
            from retrievers.demo import _LOCK, _OPEN

            with _LOCK:
                key = Path(path)
                if key not in _OPEN:
                    _OPEN[key] = CaseLibrary.open(key)
                return _OPEN[key]
        from retrievers.demo import demo_library, demo_ready, start_demo_build

        if demo_ready(home):
            return demo_library(home)
        failed = start_demo_build(home)
        if failed:
            raise ToolFailure(f"the demo case library could not be built: {failed}")
        raise ResourceNotReady(
            "the case library is not ready: it is being built in the background (first use, "
            "a few minutes; `medloop index demo` builds it ahead of time). Use other tools now."
        )

    return get


def best_sentence(report: str, query: str) -> str:
    """The report sentence sharing most words with ``query`` (else the report's start)."""
    words = {w for w in re.findall(r"[a-z]+", query.lower()) if len(w) > 2}
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", report) if s.strip()]
    if not sentences:
        return report[:160]
    scored = [(len(words & set(re.findall(r"[a-z]+", s.lower()))), -i, s)
              for i, s in enumerate(sentences)]
    best = max(scored)
    return best[2] if best[0] > 0 else sentences[0]


def _mentions(report: str | None, query: str) -> bool:
    return bool(report) and query.lower().strip() in (report or "").lower()


def _hit_dict(h: CaseHit, thumb_key: str | None) -> dict[str, object]:
    report = h.report or ""
    return {"case_id": h.case_id, "score": round(h.score, 4), "image": h.image,
            "report": report[:_REPORT_CHARS] + ("…" if len(report) > _REPORT_CHARS else ""),
            "labels": h.labels, "modality": h.modality, "thumbnail_key": thumb_key}


class SimilarArgs(ImageArgs):
    """Arguments of ``similar_cases``."""

    k: int = Field(default=5, ge=1, le=20, description="how many cases (default 5)")
    modality: str | None = Field(default=None, description="only this modality, e.g. 'CR', 'MR'")
    label: str | None = Field(default=None, description="only cases with this label")


class LookupArgs(BaseModel):
    """Arguments of ``report_lookup``."""

    query: str = Field(description="a finding or phrase, e.g. 'pleural effusion'")
    k: int = Field(default=5, ge=1, le=20, description="how many reports (default 5)")


_SIMILAR = (
    "Find the most similar prior cases in the case library to this image (image embeddings): "
    "returns their ids, similarity scores, labels and reports. Use to compare with known cases."
)
_LOOKUP = (
    "Look up real radiology reports (chest X-ray report corpus) that describe a finding or "
    "phrase, e.g. 'cardiomegaly': returns the best-matching report sentences with scores."
)


def _getter(library: CaseLibrary | Callable[[], CaseLibrary] | None,
            home: str | Path | None = None) -> Callable[[], CaseLibrary]:
    """``library`` as a zero-argument callable (None: the demo library under ``home``)."""
    if library is None:
        return default_library(home)
    if callable(library):
        return library
    return lambda: library


def _similar(store: ImageStore, get_lib: Callable[[], CaseLibrary]
             ) -> Callable[[SimilarArgs], Evidence]:
    def similar(args: SimilarArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        lib = get_lib()
        if lib.image_embedder is None:
            raise ToolInputError("this library has no image index; use another tool")
        vector = lib.image_embedder.embed_images([img.display])
        hits = lib.search_image(vector=vector, k=args.k, modality=args.modality,
                                labels=[args.label] if args.label else None)
        cases = []
        for h in hits:
            png = lib.thumbnail(h.row_id)
            key = store.put_array(decode_thumbnail(png)) if png else None
            cases.append(_hit_dict(h, key))
        if hits:
            listed = "; ".join(
                f"{h.case_id} ({h.modality or '?'}{', ' + ', '.join(h.labels) if h.labels else ''})"
                f" similarity {h.score:.2f}" for h in hits)
            summary = f"{len(hits)} most similar library cases: {listed}."
        else:
            summary = "no library case matches the filters."
        ev = Evidence(tool="similar_cases", image_id=args.image_id, summary=summary,
                      score=max(0.0, min(1.0, hits[0].score)) if hits else 0.0,
                      data={"library": str(lib.root), "cases": cases},
                      elapsed_s=time.perf_counter() - t0)
        # the nearest cases of an image unlike them all are merely the least unlike
        return flag_if_unlike(ev, library_typicality(lib, vector[0]), LIBRARY_IMAGES)

    return similar


def _lookup(get_lib: Callable[[], CaseLibrary]) -> Callable[[LookupArgs], Evidence]:
    def lookup(args: LookupArgs) -> Evidence:
        query = " ".join(args.query.split())
        if not query:
            raise ToolInputError("query is empty: name a finding, e.g. 'pleural effusion'")
        t0 = time.perf_counter()
        lib = get_lib()
        hits = lib.search_text(query, args.k, target="reports")
        mention = sum(_mentions(h.report, query) for h in hits)
        quotes = "; ".join(
            f"{h.case_id} ({h.score:.2f}): \"{best_sentence(h.report or '', query)}\""
            for h in hits[:3])
        summary = (f"{len(hits)} reports closest to '{query}' ({mention} mention it verbatim; "
                   f"similarity does not tell 'no {query}' from '{query}'). {quotes}")
        return Evidence(tool="report_lookup", summary=summary,
                        score=max(0.0, min(1.0, hits[0].score)) if hits else 0.0,
                        data={"query": query, "mentions": mention,
                              "reports": [_hit_dict(h, None) for h in hits],
                              "about": list(REPORT_WORDS),
                              "topic": "how other patients' reports word a finding"},
                        elapsed_s=time.perf_counter() - t0)

    return lookup


# Both open the library on their first call (``deps.library``, else the demo library).
LIBRARY_DOMAIN = Domain(
    validated_on="the kinds of image the case library holds (its neighbours' similarity and "
                 "agreement are the score)",
    why="a retrieval answers from the library's cases; an image unlike them gets distant "
        "neighbours and a low score, which says so better than a fixed list of modalities, "
        "and every tool over it flags an image unlike all of its images "
        "(``retrievers.typicality``)")
"""The domain of every tool that answers from the case library's neighbours."""

SHIPPED_DOMAIN = Domain(
    validated_on="clinical radiology images (the shipped library: 111 VQA-RAD CT, MR and X-ray "
                 "images of head, chest and abdomen)",
    modalities=frozenset({"CT", "MR"}) | RADIOGRAPH_MODALITIES,
    clinical_only=True, grey_only=True, outside="refuse", unknown="run",
    why="its cases are real images with clinicians' questions; a synthetic phantom's answers "
        "are in its pixels, and real cases' answers to a reworded question would be noise. "
        "It holds CT, MR and radiographs only, so a DICOM of another modality (ultrasound, "
        "mammography, nuclear medicine, an RT dose grid) is refused; a JPEG, whose modality "
        "nothing records, runs. Its images are all grey-scale, so a colour picture (a "
        "photograph, a stained slide) is refused too; a grey picture unlike them is flagged "
        "by the tool itself (``retrievers.typicality``)")
"""The tools over the shipped library (``case_answer``, the trained-heads ``classify``):
clinical images only."""

SIMILAR_CASES = ToolSpec(
    name="similar_cases", description=_SIMILAR, args=SimilarArgs,
    build=lambda deps: _similar(deps.store, _getter(deps.library, deps.home)),
    models=(LITE_MEDSAM,),
    examples=("Show me similar cases.",
              "Have we seen images like this one before?",
              "Find prior cases that look like this."),
    domain=LIBRARY_DOMAIN,
)
def _has_reports(deps: ToolDeps) -> bool:
    """The demo library has reports; a configured one only if it was built with some.

    A library built from question-answer pairs has none, and offered there the planner called
    ``report_lookup`` five times on "Is there a pleural effusion?" until its budget ran out.
    """
    return deps.library_path is None or deps.library_has("text.vec")


REPORT_LOOKUP = ToolSpec(
    name="report_lookup", description=_LOOKUP, args=LookupArgs,
    build=lambda deps: _lookup(_getter(deps.library, deps.home)),
    models=(MINILM,), enabled=_has_reports,
    examples=("What do radiology reports say about pleural effusion?",
              "How is a pneumothorax usually described in a report?",
              "Find report sentences that mention atelectasis."),
    domain=LIBRARY_DOMAIN, targets=REPORT_WORDS,
)
TOOLS = (SIMILAR_CASES, REPORT_LOOKUP)
"""``similar_cases`` (image embeddings) and ``report_lookup`` (report sentences)."""


def retrieval_tools(store: ImageStore,
                    library: CaseLibrary | Callable[[], CaseLibrary] | None = None
                    ) -> list[BaseTool]:
    """``similar_cases`` and ``report_lookup`` (the library resolves on the first call)."""
    get_lib = _getter(library)
    return [SIMILAR_CASES.bind(_similar(store, get_lib), store),
            REPORT_LOOKUP.bind(_lookup(get_lib), store)]
