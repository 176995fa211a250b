"""Graph state: messages, image ids and evidence — never pixels.

``InputState`` is what a caller sends (a question and image paths or ids); ``AgentState`` is
what the graph keeps. Everything here is small and JSON-able so checkpoints stay small: the
pixels, masks and embeddings live in the image store, keyed by the ids held here.
"""

from __future__ import annotations

import operator
from typing import Annotated

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from agent.answer import Answer, FinalAnswerArgs
from agent.trace import TraceStep
from tools.evidence import Evidence, merge_evidence
from tools.image import ImageRef


def current_question(state: AgentState | InputState) -> str:
    """The current turn's question: the text of the last user message ("" when none)."""
    for m in reversed(list(state.get("messages") or [])):
        if isinstance(m, HumanMessage):
            return str(m.content)
    return ""


def merge_refs(left: list[ImageRef], right: list[ImageRef]) -> list[ImageRef]:
    """Reducer: keep every image seen in the conversation once, in first-seen order."""
    seen = {r.id for r in left}
    return list(left) + [r for r in right if r.id not in seen and not seen.add(r.id)]  # type: ignore[func-returns-value]


class InputState(TypedDict, total=False):
    """What a caller passes to ``graph.invoke``.

    ``images`` holds paths to image files (DICOM, PNG, JPEG) or ids of images already stored;
    it is consumed by the *ingest* step, which replaces paths by ids.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    images: list[str]


class AgentState(InputState, total=False):
    """The full state of one conversation thread."""

    image_refs: Annotated[list[ImageRef], merge_refs]
    evidence: Annotated[list[Evidence], merge_evidence]
    # Per turn: the round counter, the planner's current proposal and rethink's feedback.
    turn: int
    round: int
    proposal: FinalAnswerArgs | None
    feedback: list[str]
    answer: Answer | None
    budget_exhausted: bool
    # One small typed record per step (agent.trace) for the CLI, the app and evaluation.
    trace: Annotated[list[TraceStep], operator.add]
