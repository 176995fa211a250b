"""Asking the planner how sure it is of an answer, with ``prompts/confidence``.

A second, separate look (Prompt4Trust-style confidence-aware prompting): the model sees the
question, the evidence and the proposed answer, and rates the answer's chance of being right.
The rating is one more signal for ``agent.trust.confidence.combine_confidence``; it is not trusted
alone. The reply is read as a ``rate_confidence`` tool call where the backend calls tools (the
embedded model is then grammar-constrained to it), or as JSON text otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from prompts import load_prompt

__all__ = ["RATE_TOOL", "elicit_confidence"]

RATE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "rate_confidence",
        "description": "Give the probability that the proposed answer is correct.",
        "parameters": {
            "type": "object",
            "properties": {"confidence": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["confidence"],
        },
    },
}


def _value(reply: AIMessage) -> float | None:
    for call in reply.tool_calls:
        v = call.get("args", {}).get("confidence")
        if isinstance(v, int | float):
            return float(v)
    m = re.search(r"\{[^{}]*\}", str(reply.content))
    if m:
        try:
            v = json.loads(m.group(0)).get("confidence")
        except (json.JSONDecodeError, AttributeError):
            return None
        if isinstance(v, int | float):
            return float(v)
    return None


def elicit_confidence(
    llm: Any, question: str, answer: str, evidence: Sequence[str]
) -> float | None:
    """The model's rating in [0, 1] of ``answer``, or None when it gave no usable number."""
    text = load_prompt("confidence").render(
        question=question, answer=answer, evidence="\n".join(evidence) or "(none)")
    try:
        bound = llm.bind_tools([RATE_TOOL], tool_choice="rate_confidence")
    except (NotImplementedError, TypeError, ValueError):
        bound = llm
    reply = bound.invoke([HumanMessage(content=text)])
    v = _value(reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply)))
    return None if v is None else min(max(v, 0.0), 1.0)
