"""Tool routing for small planners: offer the few tools whose purpose matches the question.

A 135M planner does not weigh twelve tool descriptions against a question. Measured on phantom
items with every default tool offered, it called the tool of the nearest worked example
(report_lookup on 24 of 25 lesion questions), whatever the question asked. The router does
that choice for it: it ranks the offered tools by the MiniLM similarity between the question
and each tool's description and example questions (its ``ToolSpec.examples``), and the planner
is offered only the best one (two when the runner-up scores close to it), plus
``final_answer`` and any tool that works on a mask an earlier call made (``measure`` after
``segment``). The planner still fills in the arguments, reads the result and writes the answer.

A tool the offer marks as outside its validated domain for every attached image
(``agent.planner.offer.OUTSIDE_NOTE`` in its description: the phantom-validated lesion detector
on a clinical image) loses ``OUTSIDE_PENALTY``, so it is never ranked first over a tool that
is inside; its note is not part of what is matched.

A tool with a closed vocabulary (``ToolSpec.targets``: the packaged finder grounds the lungs
and burned-in text only) is not routed a question that names none of it. Matched on its
example "Where are the lungs?", it had been offered first for "Where is the hemorrhage
located?" and "Is there tracheal deviation?": on 640 real items the small planner called it
on 96 (15 %), all 192 calls failed (no such target, or garbled arguments), and those items
took a median 27 s against 14 s. ``report_lookup`` declares the words of a question about how
reports word a finding (``retrievers.similar.REPORT_WORDS``): it had been offered "Is there a
pneumothorax?".

Larger planners choose for themselves: routing is on by default only for chat models that
declare ``prefers_tool_routing`` (the embedded one), and ``AgentContext.route_tools`` turns it
on or off for any backend.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from agent.answer import FINAL_ANSWER_TOOL
from agent.planner.offer import OUTSIDE_NOTE

log = logging.getLogger(__name__)

EARLIER_WEIGHT = 0.3
"""Weight of the previous question in a follow-up's score: "and how big is it?" after "is
there a nodule?" stays with the lesion tool; a new topic ("is the heart enlarged?") does not."""


OUTSIDE_PENALTY = 1.0
"""Subtracted from the score of a tool outside its domain for every image: more than any
cosine similarity gap, so an in-domain tool always ranks above it."""


class TextEmbedder(Protocol):
    """What the router needs from an embedder: unit-length sentence vectors."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, as rows."""
        ...


@lru_cache(maxsize=1)
def route_examples() -> dict[str, tuple[str, ...]]:
    """Example questions per tool name, from each tool's declaration (``ToolSpec.examples``).

    Backends that share a name (the ``classify`` ones) pool their questions, first seen first.
    """
    from agent.planner.toolset import tool_specs

    out: dict[str, dict[str, None]] = {}
    for spec in tool_specs():
        out.setdefault(spec.name, {}).update(dict.fromkeys(spec.examples))
    return {name: tuple(qs) for name, qs in out.items() if qs}


@lru_cache(maxsize=1)
def _variant_examples() -> dict[tuple[str, str], tuple[str, ...]]:
    """Example questions per declared (name, description): one backend's own questions.

    Several backends share a name (``classify``: kNN, trained heads, an image-text model, the
    chest findings model); the offer carries the description of the one that is enabled, and
    it is matched with its own questions only. Pooled, a disabled backend's questions pulled
    other questions to it ("How do reports describe consolidation?" went to ``classify`` once
    the chest findings model declared "pneumonia or consolidation").
    """
    from agent.planner.toolset import tool_specs

    out: dict[tuple[str, str], dict[str, None]] = {}
    for spec in tool_specs():
        out.setdefault((spec.name, spec.description), {}).update(dict.fromkeys(spec.examples))
    return {key: tuple(qs) for key, qs in out.items() if qs}


@lru_cache(maxsize=1)
def _variant_targets() -> dict[tuple[str, str], tuple[str, ...]]:
    """The closed vocabulary per declared (name, description), where a backend has one."""
    from agent.planner.toolset import tool_specs

    return {(spec.name, spec.description): spec.targets for spec in tool_specs() if spec.targets}


def names_a_target(spec: dict[str, Any], *questions: str | None) -> bool:
    """Whether one of ``questions`` names something the offered tool can be asked about.

    True for a tool without a closed vocabulary (``ToolSpec.targets``); otherwise a target
    must appear as whole words ("lung" in "Is there a lung mass?", not in "lunge").
    """
    targets = _variant_targets().get((_name(spec), _description(spec)[0]))
    if not targets:
        return True
    text = " ".join(q.lower() for q in questions if q)
    return any(re.search(rf"\b{re.escape(t)}\b", text) for t in targets)


def _name(spec: dict[str, Any]) -> str:
    return str(spec["function"]["name"])


def _description(spec: dict[str, Any]) -> tuple[str, bool]:
    """The tool's own description, and whether the offer marked it outside its domain."""
    desc = str(spec["function"].get("description") or _name(spec))
    own, mark, _ = desc.partition(f" {OUTSIDE_NOTE} ")
    return own, bool(mark)


def _follows_up(spec: dict[str, Any]) -> bool:
    """Tools that take a mask key: offered only once a mask exists, then always kept."""
    params = spec["function"].get("parameters", {})
    return "mask_key" in params.get("required", [])


@dataclass
class ToolRouter:
    """Ranks tools against a question and keeps the best few.

    Attributes:
        top_k: most routed tools offered (``final_answer`` and mask follow-ups come on top).
        margin: a tool after the best is offered only if it scores within this of the best;
            a clear winner is offered alone, so the planner cannot wander to a worse match.
        embedder: sentence embedder; None for the packaged MiniLM (loaded on first use).
    """

    top_k: int = 1
    margin: float = 0.05
    embedder: TextEmbedder | None = None
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, each embedded once per router."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
            if missing:
                if self.embedder is None:
                    from retrievers.embedders import shared_minilm

                    self.embedder = shared_minilm()
                vecs = self.embedder.embed_texts(missing)
                self._vectors.update(zip(missing, np.asarray(vecs, np.float32), strict=True))
            return np.stack([self._vectors[t] for t in texts])

    def scores(
        self, tools: Sequence[dict[str, Any]], question: str, earlier: str | None = None
    ) -> dict[str, float]:
        """Each tool's match to the question.

        A tool scores its best cosine similarity over its description and example questions
        (those of the backend whose description the offer carries; a tool declared nowhere,
        a plugin's say, falls back to the questions pooled under its name),
        blended with the previous question's when there is one, less ``OUTSIDE_PENALTY`` when
        the offer marked it outside its domain.
        """
        raw, outside = self._match(tools, question, earlier)
        return {n: v - OUTSIDE_PENALTY if n in outside else v for n, v in raw.items()}

    def _match(
        self, tools: Sequence[dict[str, Any]], question: str, earlier: str | None
    ) -> tuple[dict[str, float], set[str]]:
        """Each tool's similarity to the question, and the tools marked outside their domain."""
        pooled, own = route_examples(), _variant_examples()
        keys: list[tuple[str, str]] = []
        outside: set[str] = set()
        for spec in tools:
            name = _name(spec)
            desc, marked = _description(spec)
            if marked:
                outside.add(name)
            examples = own.get((name, desc)) or pooled.get(name, ())
            keys += [(name, desc), *((name, q) for q in examples)]
        asked = [question] + ([earlier] if earlier else [])
        vecs = self._embed([t for _, t in keys] + asked)
        sims = vecs[len(keys):] @ vecs[: len(keys)].T  # (1 or 2 questions, texts)
        out: dict[str, float] = {}
        for j, (name, _) in enumerate(keys):
            s = float(sims[0, j])
            if earlier:
                s = (1 - EARLIER_WEIGHT) * s + EARLIER_WEIGHT * float(sims[1, j])
            out[name] = max(out.get(name, -1.0), s)
        return out, outside

    def route(
        self, offer: Sequence[dict[str, Any]], question: str, earlier: str | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The tools to offer, in their original order, and the routed tools' scores."""
        candidates = [s for s in offer if _name(s) != FINAL_ANSWER_TOOL and not _follows_up(s)]
        unasked = [s for s in candidates if not names_a_target(s, question, earlier)]
        if unasked:  # a closed vocabulary the question does not name: not a candidate
            offer = [s for s in offer if s not in unasked]
            candidates = [s for s in candidates if s not in unasked]
        if len(candidates) <= 1 or not question.strip():
            return list(offer), {}
        raw, outside = self._match(candidates, question, earlier)
        scores = {n: v - OUTSIDE_PENALTY if n in outside else v for n, v in raw.items()}
        ranked = sorted(candidates, key=lambda s: -scores[_name(s)])
        best = scores[_name(ranked[0])]
        keep = {_name(s) for s in ranked[: self.top_k] if scores[_name(s)] >= best - self.margin}
        chosen = [s for s in offer if _name(s) in keep or s not in candidates]
        return chosen, {n: round(scores[n], 3) for n in keep}


_ROUTERS: dict[tuple[int, float], ToolRouter] = {}
_ROUTERS_LOCK = threading.Lock()


def shared_router(top_k: int, margin: float = 0.05) -> ToolRouter:
    """One router per setting per process, so tool descriptions are embedded once."""
    with _ROUTERS_LOCK:
        key = (top_k, margin)
        if key not in _ROUTERS:
            _ROUTERS[key] = ToolRouter(top_k=top_k, margin=margin)
        return _ROUTERS[key]
