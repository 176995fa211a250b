"""Running the agent over a suite: one fresh thread per item, fixed seed, N repeats.

Every item is asked in its own thread (a new thread id, no checkpointer shared with another
item), so nothing one question saw can leak into the next. A *variant* changes what the agent
is shown, for the sanity baselines that SURE-VQA and MediConfusion recommend:

- ``full`` — the item as it is;
- ``blank`` — every image replaced by a uniform image of its own mean intensity (same size,
  spacing and metadata): what can be answered without looking;
- ``shuffled`` — each item gets the images of another item (a fixed derangement): answers that
  ignore the pixels score the same as with the right images;
- ``question_only`` — no image at all.

The record of a run holds what the metrics need: the graded answer, the calibrated and raw
confidence, abstention, boxes of the cited evidence, the size read from the answer, latency
and the number of tool calls (read from the typed trace, ``agent.trace``: the *act* records
and the *answer* record). For open answers it also holds the normalised exact match and the
token recall (``agent.evaluation.scoring.open_scores``); for every answer, the conflicts
between what it says and the evidence it cites (``agent.trust.agreement.answer_conflicts``,
recomputed from the final state: the answer text and each finding with its cited evidence),
the keys of the item's own images (for folds by image) and their domain (phantom/clinical).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.evaluation.folds import image_keys
from agent.evaluation.items import EvalItem
from agent.evaluation.metrics import grounding_iou
from agent.evaluation.scoring import Grade, OpenScores, grade, open_scores, states_answer
from agent.trace import ActStep, AnswerStep, ThinkStep, TraceStep, steps_of
from agent.trust.agreement import answer_conflicts
from agent.trust.calibration import domain_of
from tools.image import LoadedImage

__all__ = ["VARIANTS", "Record", "evidence_conflicts", "read_records", "run_item", "run_suite",
           "variant_images"]

Variant = Literal["full", "blank", "shuffled", "question_only"]
VARIANTS: tuple[Variant, ...] = ("full", "blank", "shuffled", "question_only")


@dataclass
class Record:
    """One agent run on one item (one repeat, one variant)."""

    item_id: str
    variant: str
    repeat: int
    question: str
    reference: str
    answer_type: str
    answer: str
    parsed: str | None
    correct: bool
    confidence: float
    raw_confidence: float
    abstained: bool
    latency_s: float
    tool_calls: int
    tools: list[str] = field(default_factory=list)
    iou: float | None = None
    size_error_mm: float | None = None
    error: str | None = None
    elicited: float | None = None
    agreement: float | None = None  # answer-time self-consistency (``--samples``)
    evidence: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    exact_match: bool | None = None  # open answers: normalised exact match
    token_recall: float | None = None  # open answers: share of the reference's words said
    conflicts: list[str] = field(default_factory=list)  # the answer against its cited evidence
    item_images: list[str] = field(default_factory=list)  # the item's own images (folds)
    domain: str = ""  # the item's image domain: phantom or clinical ("" in older records)
    planner_s: float | None = None  # where the time went: the planner calls, summed
    tools_s: float | None = None  # the tool calls, summed (they may overlap)
    planner_calls: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _load(image: str | LoadedImage) -> LoadedImage:
    if isinstance(image, LoadedImage):
        return image
    from tools.ingest.loader import load_image

    return load_image(image)


def _blank(img: LoadedImage) -> LoadedImage:
    px = np.full_like(img.pixels, float(np.mean(img.pixels)))
    disp = np.full_like(img.display, int(np.mean(img.display)))
    return LoadedImage(pixels=px, display=disp, spacing_mm=img.spacing_mm,
                       spacing_source=img.spacing_source, meta=dict(img.meta),
                       source_format=img.source_format, notes=list(img.notes))


def variant_images(
    items: Sequence[EvalItem], variant: Variant, seed: int = 0
) -> list[list[str | LoadedImage]]:
    """The images each item is shown under ``variant`` (see the module docstring)."""
    if variant == "full":
        return [list(it.images) for it in items]
    if variant == "question_only":
        return [[] for _ in items]
    if variant == "blank":
        return [[_blank(_load(im)) for im in it.images] for it in items]
    n = len(items)
    if n < 2:
        return [list(it.images) for it in items]
    order = list(range(n))
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):  # a derangement: nobody keeps their own
        rng.shuffle(order)
    return [list(items[order[i]].images) for i in range(n)]


_ABSTAIN_PREFIX = re.compile(r"^\s*Uncertain \(confidence [0-9.]+\):\s*")


def evidence_conflicts(state: dict[str, Any], question: str) -> list[str]:
    """What the final answer says against its own cited evidence (empty: it agrees).

    Recomputed from the state, not copied from the answer node: the answer text (without an
    abstention's "Uncertain (confidence ...):" prefix) against everything its findings cite,
    and each finding against its own citations.
    """
    answer = state.get("answer")
    if answer is None:
        return []
    evidence = {e.id: e for e in state.get("evidence") or []}
    claims = [(c.statement, [evidence[i] for i in c.evidence_ids if i in evidence])
              for c in answer.findings]
    return answer_conflicts(_ABSTAIN_PREFIX.sub("", answer.text), claims, question)


def _cited_boxes(state: dict[str, Any]) -> list[tuple[float, ...]]:
    answer = state.get("answer")
    evidence = {e.id: e for e in state.get("evidence") or []}
    cited = [i for c in (answer.findings if answer else []) for i in c.evidence_ids]
    pool = [evidence[i] for i in cited if i in evidence] or [
        e for e in evidence.values() if e.status == "ok"]
    return [tuple(b.xyxy) for e in pool for b in e.boxes]


def run_item(
    graph: Any,
    store: Any,
    item: EvalItem,
    images: Sequence[str | LoadedImage],
    *,
    variant: str = "full",
    repeat: int = 0,
) -> Record:
    """Ask ``graph`` the item's question about ``images`` in a fresh thread and grade it.

    A run that raises is recorded as wrong with confidence 0 and the error's message (so one
    broken item does not stop a benchmark); ``KeyboardInterrupt`` still stops it.
    """
    ids = [store.put(_load(im)).id for im in images]
    keys, domain = image_keys(item), domain_of(item.images)
    thread = f"eval-{item.id}-{variant}-{repeat}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        state = graph.invoke(
            {"messages": [("user", item.prompt)], "images": ids},
            config={"configurable": {"thread_id": thread}},
        )
    except Exception as exc:  # recorded, not hidden: the report counts errors
        return Record(item.id, variant, repeat, item.prompt, item.answer, item.answer_type,
                      "", None, False, 0.0, 0.0, True, time.perf_counter() - t0, 0,
                      error=f"{type(exc).__name__}: {exc}"[:300], meta=dict(item.meta),
                      item_images=keys, domain=domain)
    latency = time.perf_counter() - t0
    ans = state["answer"]
    text = " ".join([ans.text, *(c.statement for c in ans.findings)])
    g = grade(ans.text, item.answer, item.answer_type, options=item.options,
              tolerance=item.tolerance)
    if g.parsed is None and ans.findings:  # the reply's first sentence said nothing: the claims
        g = grade(text, item.answer, item.answer_type, options=item.options,
                  tolerance=item.tolerance)
    answered = states_answer(ans.text, bool(ans.abstained))
    if not answered:
        g = Grade(False, None)
    trace: list[TraceStep] = state.get("trace") or []
    acts: list[ActStep] = steps_of(trace, "act")
    thinks: list[ThinkStep] = steps_of(trace, "think")
    answers: list[AnswerStep] = steps_of(trace, "answer")
    final = answers[-1] if answers else None
    iou = grounding_iou(item.boxes, _cited_boxes(state)) if item.boxes and images else None
    size_err = (abs(g.value - item.value_mm) if item.value_mm is not None and g.value is not None
                and item.answer_type == "number" else None)
    scores = (None if item.answer_type != "open" else open_scores(ans.text, item.answer)
              if answered else OpenScores(False, 0.0))
    return Record(
        evidence=[e.for_prompt() for e in state.get("evidence") or []],
        item_id=item.id, variant=variant, repeat=repeat, question=item.prompt,
        reference=item.answer, answer_type=item.answer_type, answer=ans.text,
        parsed=g.parsed, correct=g.correct, confidence=float(ans.confidence),
        raw_confidence=float(final["raw_confidence"] if final else ans.confidence),
        abstained=bool(ans.abstained), latency_s=latency, tool_calls=len(acts),
        tools=[t["tool"] for t in acts], iou=iou, size_error_mm=size_err,
        agreement=final.get("agreement") if final else None, meta=dict(item.meta),
        exact_match=scores.exact if scores else None,
        token_recall=scores.token_recall if scores else None,
        conflicts=evidence_conflicts(state, item.prompt), item_images=keys, domain=domain,
        planner_s=round(sum(t["elapsed_s"] for t in thinks), 3),
        tools_s=round(sum(a["elapsed_s"] for a in acts), 3),
        planner_calls=sum(1 for t in thinks if not t.get("consulted") and not t.get("stopped")),
    )


def read_records(path: str | Path) -> list[Record]:
    """Records saved one JSON object a line (``records.jsonl``, or gzipped: ``.jsonl.gz``).

    A record of a reply that gave no answer (``states_answer``) is read as not right, whatever
    an older scorer made of it.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    records = [Record(**json.loads(line)) for line in raw.decode("utf-8").splitlines()
               if line.strip()]
    for r in records:
        if r.error is None and not states_answer(r.answer, r.abstained):
            r.correct, r.parsed = False, None
            if r.exact_match is not None or r.token_recall is not None:
                r.exact_match, r.token_recall = False, 0.0
    return records


def run_suite(
    make_graph: Callable[[], tuple[Any, Any]],
    items: Sequence[EvalItem],
    *,
    variants: Sequence[Variant] = ("full",),
    repeats: int = 1,
    seed: int = 0,
    baseline_limit: int | None = None,
    progress: Callable[[Record, int, int], None] | None = None,
    elicit: Callable[[str, str, list[str]], float | None] | None = None,
) -> list[Record]:
    """Run every item ``repeats`` times under each variant; ``make_graph()`` → (graph, store).

    Baselines (variants other than ``full``) run on the first ``baseline_limit`` items only,
    when given. ``seed`` fixes the shuffle and is passed on to Python's and numpy's RNGs.
    ``elicit(question, answer, evidence lines)``, when given, asks for a separate confidence
    rating after each run (``agent.evaluation.elicit``).
    """
    random.seed(seed)
    np.random.seed(seed)
    graph, store = make_graph()
    shown = {v: variant_images(list(items) if v == "full" or baseline_limit is None
                               else list(items[:baseline_limit]), v, seed) for v in variants}
    # Interleaved by item (each item under every variant, then the next item), so a run cut
    # short still has baselines beside the items it finished.
    plan: list[tuple[Variant, int, EvalItem, list[str | LoadedImage]]] = []
    for r in range(repeats):
        for i, it in enumerate(items):
            plan += [(v, r, it, shown[v][i]) for v in variants if i < len(shown[v])]
    records: list[Record] = []
    for k, (variant, r, it, im) in enumerate(plan):
        rec = run_item(graph, store, it, im, variant=variant, repeat=r)
        if elicit is not None and rec.error is None:
            rec.elicited = elicit(rec.question, rec.answer, rec.evidence)
        records.append(rec)
        if progress:
            progress(rec, k + 1, len(plan))
    return records
