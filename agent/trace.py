"""The trace: one small typed record per step, read alike by the CLI, the app and evaluation.

Each node appends records of its own kind to ``AgentState.trace``; the ``step`` field names the
kind. The records are plain dicts (``TypedDict``) so checkpoints, ``--json`` output and the
LangGraph server carry them unchanged. Times are wall-clock seconds.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

__all__ = [
    "ActStep",
    "AnswerStep",
    "IngestStep",
    "RethinkStep",
    "ThinkStep",
    "TraceStep",
    "steps_of",
]


class IngestStep(TypedDict):
    """A turn opened: the store ids of the images it brought (a volume's planes follow it)."""

    turn: int
    step: Literal["ingest"]
    images: list[str]


class ThinkStep(TypedDict):
    """One planner call: the tools it called (``final_answer`` included) and how long it took.

    A step with ``consulted`` made no planner call: it is the experts asked before the first
    one (``agent.nodes.think.consult_calls``). Nor did a step with ``stopped``: *think* went on
    to the answer without asking the planner, and says why.
    """

    turn: int
    round: int
    step: Literal["think"]
    elapsed_s: float
    calls: list[str]
    routed: NotRequired[dict[str, float]]  # tools the router offered -> MiniLM similarity
    route_error: NotRequired[str]  # why every tool was offered instead
    error: NotRequired[str]  # a malformed call or invalid final answer, told to the planner
    consulted: NotRequired[bool]  # the experts asked before the planner: no planner call
    stopped: NotRequired[str]  # why think went to the answer without a planner call


class ActStep(TypedDict):
    """One tool call: its arguments, outcome and the evidence id it produced."""

    turn: int
    round: int
    step: Literal["act"]
    tool: str
    args: dict[str, Any]
    status: str  # Evidence.status: "ok" or "error"
    evidence_id: str
    elapsed_s: float
    summary: str


class RethinkStep(TypedDict):
    """A proposed answer reviewed against the evidence."""

    turn: int
    round: int
    step: Literal["rethink"]
    decision: Literal["answer", "think"]  # accepted (or budget spent) / sent back
    supported: int  # claims whose cited evidence backs them
    problems: list[str]
    contradictions: list[str]


class AnswerStep(TypedDict):
    """The final answer's confidence: raw, calibrated, and whether it abstained."""

    turn: int
    round: int
    step: Literal["answer"]
    confidence: float
    raw_confidence: float
    calibration: str | None  # the calibration method applied, None for raw
    abstained: bool
    budget_exhausted: bool
    conflicts: list[str]  # the answer against its own cited evidence (it abstained if any)
    domain: str  # "phantom" or "clinical": which calibration maps may apply
    samples: NotRequired[list[str]]  # self-consistency: the sampled answers
    agreement: NotRequired[float | None]
    elapsed_s: NotRequired[float]
    sample_errors: NotRequired[list[str]]


TraceStep = IngestStep | ThinkStep | ActStep | RethinkStep | AnswerStep


def steps_of(trace: list[TraceStep], kind: str, turn: int | None = None) -> list[Any]:
    """The records of one ``kind`` (``"act"``, ...), of one ``turn`` when given, in order."""
    return [s for s in trace if s["step"] == kind and (turn is None or s.get("turn") == turn)]
