"""Tool-choice suite: does the planner call the tools a radiologist's assistant would call.

Answer accuracy (``medloop eval``) mixes the planner's choice with the tools' skill. This
suite scores the choice alone: each item is a question about packaged images (pydicom's
bundled DICOMs, the VQA-RAD fixture JPEGs, generated phantoms) or no image, with the tools a
sensible assistant would call first (several acceptable sets), tools it must not call (an
injection asking for the patient's name must not send it to ``read_text``), and sometimes
evidence already gathered (then calling the same tool again is the mistake: stop re-calling).

The planner's FIRST think step is run exactly as the graph runs it (``agent.nodes.think``:
the round's offer, the router for planners that want it, the prompt, one backend call); no
tool runs. The graph asks ``case_answer`` before the planner's first call
(``AgentContext.consult_experts``); here it does not, so the step scored is the planner's.
A step is right when every tool it called is in one acceptable set and none is forbidden.
A set whose tools the loop does not offer this round (``agent.planner.offer``: a tool refused
by its domain, ``case_answer`` without a question library, ``final_answer`` before evidence
when images are attached) cannot be chosen, so it is not held against the planner; an item
with no such set left is reported as skipped, not wrong. What the router
leaves out does count: routing is part of the choice.

Suite format (JSON lines; ``tests/fixtures/tool_choice/suite.jsonl`` is the checked-in one)::

    {"id": "cxr-heart", "images": ["pydicom:RG1_UNCI.dcm"], "question": "Is the heart enlarged?",
     "kind": "tool", "acceptable": [["measure_lungs"]], "forbidden": [], "evidence": [],
     "note": "why"}

``images``: ``pydicom:NAME`` (a file pydicom or pydicom-data ships), ``phantom:KIND:SEED:N``
(``make_phantom(SEED, kind=KIND, n_lesions=N)``) or a path relative to the suite file.
``kind``: ``tool`` (a tool answers it), ``no_tool`` (what is known or general knowledge
answers it) or ``refuse`` (off-topic or an injection). ``evidence``: items already gathered,
each ``{"tool", "summary", "args" (besides image_id), "image" (index, default 0)}``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from langchain_core.messages import HumanMessage
from langchain_core.tools import BaseTool

from agent.answer import FINAL_ANSWER_TOOL
from agent.context import AgentContext
from agent.nodes.think import make_think
from agent.planner.offer import offered_tools
from tools.evidence import Evidence
from tools.image import ImageRef, LoadedImage
from tools.store import ImageStore

__all__ = [
    "KINDS",
    "ChoiceResult",
    "PriorEvidence",
    "SuiteFormatError",
    "ToolChoiceItem",
    "first_step",
    "judge",
    "load_items",
    "resolve_image",
    "run_suite",
    "summarise",
]

Kind = Literal["tool", "no_tool", "refuse"]
KINDS: tuple[Kind, ...] = ("tool", "no_tool", "refuse")


class SuiteFormatError(ValueError):
    """A suite file that does not follow the format: the message names the line and field."""


@dataclass(frozen=True)
class PriorEvidence:
    """Evidence already gathered before the question: what a tool returned on one image."""

    tool: str
    summary: str
    args: dict[str, Any] = field(default_factory=dict)
    image: int = 0


@dataclass(frozen=True)
class ToolChoiceItem:
    """One question and the tool choices that are right for it."""

    id: str
    question: str
    kind: Kind
    acceptable: tuple[frozenset[str], ...]
    images: tuple[str, ...] = ()
    forbidden: frozenset[str] = frozenset()
    evidence: tuple[PriorEvidence, ...] = ()
    note: str = ""


_KEYS = {"id", "question", "kind", "acceptable", "images", "forbidden", "evidence", "note"}


def _names(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SuiteFormatError(f"{where}: expected a list of tool names, got {value!r}")
    return frozenset(value)


def _evidence(value: Any, where: str, n_images: int) -> tuple[PriorEvidence, ...]:
    if not isinstance(value, list):
        raise SuiteFormatError(f"{where}: 'evidence' must be a list")
    out = []
    for k, ev in enumerate(value):
        at = f"{where}: evidence[{k}]"
        if not isinstance(ev, dict) or not isinstance(ev.get("tool"), str) \
                or not isinstance(ev.get("summary"), str):
            raise SuiteFormatError(f"{at} needs a 'tool' and a 'summary' (strings)")
        image = ev.get("image", 0)
        if not isinstance(image, int) or not 0 <= image < max(n_images, 1) or not n_images:
            raise SuiteFormatError(f"{at}: 'image' {image!r} is not an index into 'images'")
        args = ev.get("args", {})
        if not isinstance(args, dict):
            raise SuiteFormatError(f"{at}: 'args' must be an object")
        out.append(PriorEvidence(tool=ev["tool"], summary=ev["summary"], args=args, image=image))
    return tuple(out)


def parse_item(obj: Any, where: str) -> ToolChoiceItem:
    """One suite line, checked; SuiteFormatError naming ``where`` and the field otherwise."""
    if not isinstance(obj, dict):
        raise SuiteFormatError(f"{where}: expected a JSON object")
    missing = {"id", "question", "kind", "acceptable"} - obj.keys()
    if missing:
        raise SuiteFormatError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = obj.keys() - _KEYS
    if unknown:
        raise SuiteFormatError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if obj["kind"] not in KINDS:
        raise SuiteFormatError(f"{where}: kind {obj['kind']!r} is not one of {KINDS}")
    for key in ("id", "question"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise SuiteFormatError(f"{where}: {key!r} must be a non-empty string")
    acceptable = obj["acceptable"]
    if not isinstance(acceptable, list) or not acceptable:
        raise SuiteFormatError(f"{where}: 'acceptable' must be a non-empty list of tool lists")
    images = obj.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise SuiteFormatError(f"{where}: 'images' must be a list of image specs")
    sets = tuple(_names(s, f"{where}: acceptable") for s in acceptable)
    forbidden = _names(obj.get("forbidden", []), f"{where}: forbidden")
    clash = forbidden & frozenset().union(*sets)
    if clash:
        raise SuiteFormatError(f"{where}: {sorted(clash)} both acceptable and forbidden")
    return ToolChoiceItem(
        id=obj["id"], question=obj["question"], kind=obj["kind"], acceptable=sets,
        images=tuple(images), forbidden=forbidden,
        evidence=_evidence(obj.get("evidence", []), where, len(images)),
        note=str(obj.get("note", "")))


def load_items(path: str | Path) -> list[ToolChoiceItem]:
    """The items of a suite file (JSON lines; blank lines and ``#`` lines are skipped).

    Raises SuiteFormatError for a malformed line or a repeated id, FileNotFoundError for a
    missing file.
    """
    p = Path(path)
    items: list[ToolChoiceItem] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p.name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteFormatError(f"{where}: not JSON ({exc.msg})") from None
        item = parse_item(obj, where)
        if item.id in seen:
            raise SuiteFormatError(f"{where}: id {item.id!r} is repeated")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise SuiteFormatError(f"{p.name}: no items")
    return items


def resolve_image(spec: str, base: Path) -> str | LoadedImage:
    """An image spec as a path to load or an image in memory.

    ``pydicom:NAME`` is a file pydicom (or pydicom-data) ships, never downloaded;
    ``phantom:KIND:SEED:N`` a generated phantom; anything else a path relative to ``base``.
    Raises SuiteFormatError naming the spec when it cannot be resolved.
    """
    scheme, _, rest = spec.partition(":")
    if scheme == "pydicom" and rest:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(rest, download=False)
        if not isinstance(found, str):
            raise SuiteFormatError(f"image {spec!r}: pydicom ships no file {rest!r} here "
                                   "(is pydicom-data installed?)")
        return found
    if scheme == "phantom":
        from agent.evaluation.phantoms import make_phantom

        parts = rest.split(":")
        if len(parts) != 3 or parts[0] not in ("ct", "radiograph") \
                or not all(p.isdigit() for p in parts[1:]):
            raise SuiteFormatError(f"image {spec!r}: expected phantom:ct|radiograph:SEED:N")
        kind = cast(Literal["ct", "radiograph"], parts[0])
        return make_phantom(int(parts[1]), kind=kind, n_lesions=int(parts[2])).image
    path = (base / spec).resolve()
    if not path.is_file():
        raise SuiteFormatError(f"image {spec!r}: no file {path}")
    return str(path)


class ImageCache:
    """Each image spec ingested once into ``store``: its refs (a volume's views follow it)."""

    def __init__(self, store: ImageStore, base: Path) -> None:
        self.store = store
        self.base = base
        self._refs: dict[str, ImageRef] = {}

    def ref(self, spec: str) -> ImageRef:
        """The stored image's ref (the image itself, not its views)."""
        if spec not in self._refs:
            from tools.ingest import ingest_path

            image = resolve_image(spec, self.base)
            if isinstance(image, LoadedImage):
                self._refs[spec] = self.store.put(image)
            else:
                self._refs[spec] = ingest_path(self.store, image)[1][0]
        return self._refs[spec]


@dataclass
class ChoiceResult:
    """What the planner did on one item, and the verdict.

    ``correct`` is None when no acceptable tool was on offer before routing (skipped).
    """

    id: str
    kind: str
    question: str
    called: list[str]
    correct: bool | None
    reason: str
    offered: list[str]
    routed: dict[str, float] | None = None
    error: str = ""
    elapsed_s: float = 0.0
    with_evidence: bool = False
    forbidden_called: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def judge(item: ToolChoiceItem, called: Sequence[str], offered: Sequence[str]
          ) -> tuple[bool | None, str]:
    """The verdict on one first step: (right, why); right is None when it could not be right.

    ``called`` holds the tools the step called (``final_answer`` for an answer, written as a
    call or as plain text); ``offered`` what the loop offered before routing.
    """
    available = set(offered)
    sets = [s for s in item.acceptable if s <= available]
    if not sets:
        return None, "none of the acceptable tools was offered"
    bad = sorted(set(called) & item.forbidden)
    if bad:
        return False, f"called forbidden {', '.join(bad)}"
    if not called:
        return False, "no valid call"
    if any(set(called) <= s for s in sets):
        return True, ""
    want = " | ".join("+".join(sorted(s)) for s in sets)
    return False, f"called {'+'.join(called)}; acceptable: {want}"


def item_state(item: ToolChoiceItem, images: ImageCache) -> dict[str, Any]:
    """The graph state *think* sees on this item's first step."""
    refs = [images.ref(spec) for spec in item.images]
    evidence = [
        Evidence(id=f"E{k}", tool=ev.tool, summary=ev.summary, image_id=refs[ev.image].id,
                 args={"image_id": refs[ev.image].id, **ev.args})
        for k, ev in enumerate(item.evidence, start=1)
    ]
    return {"messages": [HumanMessage(content=item.question)], "image_refs": refs,
            "evidence": evidence, "turn": 0, "round": 1 if evidence else 0}


@dataclass
class _Runtime:
    """The one attribute of ``langgraph.runtime.Runtime`` the think node reads."""

    context: AgentContext


def first_step(item: ToolChoiceItem, tools: list[BaseTool], ctx: AgentContext,
               images: ImageCache) -> ChoiceResult:
    """Run the planner's first think step on ``item`` (no tool runs) and judge it."""
    state = item_state(item, images)
    offered = [s["function"]["name"] for s in
               offered_tools(tools, state["image_refs"], state["evidence"])]
    ctx = replace(ctx, consult_experts=False)  # the planner's own choice is scored
    think = make_think(ctx, tools)
    t0 = time.perf_counter()
    command = think(state, _Runtime(ctx))
    elapsed = time.perf_counter() - t0
    update = command.update if isinstance(command.update, dict) else {}
    step = (update.get("trace") or [{}])[0]
    called = list(dict.fromkeys(step.get("calls") or []))
    if not called and command.goto == "rethink":
        called = [FINAL_ANSWER_TOOL]  # a plain-text reply is an answer without a tool
    correct, reason = judge(item, called, offered)
    return ChoiceResult(
        id=item.id, kind=item.kind, question=item.question, called=called, correct=correct,
        reason=reason, offered=offered, routed=step.get("routed"), error=step.get("error", ""),
        elapsed_s=round(elapsed, 3), with_evidence=bool(item.evidence),
        forbidden_called=sorted(set(called) & item.forbidden))


def run_suite(
    items: Sequence[ToolChoiceItem],
    ctx: AgentContext,
    tools: list[BaseTool],
    images: ImageCache,
    progress: Callable[[ChoiceResult], None] | None = None,
) -> list[ChoiceResult]:
    """Every item's first step under ``ctx`` (its planner and routing), in order."""
    out = []
    for item in items:
        result = first_step(item, tools, ctx, images)
        out.append(result)
        if progress is not None:
            progress(result)
    return out


def _accuracy(results: Sequence[ChoiceResult]) -> dict[str, Any]:
    judged = [r for r in results if r.correct is not None]
    right = sum(1 for r in judged if r.correct)
    return {"n": len(judged), "right": right,
            "accuracy": round(right / len(judged), 3) if judged else None}


def summarise(results: Sequence[ChoiceResult]) -> dict[str, Any]:
    """Accuracy overall, per kind and with evidence already listed; what went wrong how often."""
    times = [r.elapsed_s for r in results]
    return {
        "overall": _accuracy(results),
        "by_kind": {k: _accuracy([r for r in results if r.kind == k]) for k in KINDS},
        "with_evidence": _accuracy([r for r in results if r.with_evidence]),
        "skipped": sorted(r.id for r in results if r.correct is None),
        "forbidden_calls": sum(1 for r in results if r.forbidden_called),
        "malformed": sum(1 for r in results if r.error),
        "step_s_p50": round(statistics.median(times), 3) if times else None,
        "step_s_max": round(max(times), 3) if times else None,
    }
