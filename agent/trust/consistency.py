"""Self-consistency at answer time: sample more answers and count how many agree.

A planner's verbalised confidence says little; whether it gives the same answer again when
sampled says more (Wang et al. 2023; in the phantom evaluation, pooling agreement with the
raw confidence cut AURC from 0.35 to 0.21). With ``AgentContext.answer_samples = N``, once
*rethink* accepts a proposal the planner is asked again, N times, at
``AgentContext.sample_temperature``, from the same prompt with only ``final_answer`` offered;
the share of answers that say what the proposal says (``agent.trust.confidence.answer_key``) is
pooled into the confidence. It costs N planner calls per answer, so it is off by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage

from agent.answer import FINAL_ANSWER_TOOL
from agent.llm.toolcalls import parse_tool_calls
from agent.planner.offer import final_answer_schema
from agent.trust.confidence import agreement_share


@dataclass
class Samples:
    """The sampled answers and what they add up to."""

    answers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    agreement: float | None = None
    elapsed_s: float = 0.0


def _answer_of(reply: Any, offer: list[dict[str, Any]], parsed: bool = True) -> str | None:
    """The answer text of a sampled reply: its final_answer call, else its JSON, else text.

    ``parsed``: the backend already read its reply's calls (medloop's backends declare
    ``returns_parsed_tool_calls``); only another model's text is read for calls here.
    """
    ai = reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply.content))
    calls = list(ai.tool_calls)
    if not calls and not parsed and isinstance(ai.content, str):
        calls = list(parse_tool_calls(ai.content, offer).calls)
    for call in calls:
        if call["name"] == FINAL_ANSWER_TOOL:
            answer = call["args"].get("answer")
            return str(answer) if answer else None
    text = str(ai.content).strip() if isinstance(ai.content, str) else ""
    return text or None


def sample_answers(
    llm: BaseChatModel,
    prompt: list[AnyMessage],
    offer: list[dict[str, Any]],
    question: str,
    proposal: str,
    n: int,
    temperature: float,
) -> Samples:
    """Ask ``llm`` for ``n`` more final answers to ``prompt`` and measure their agreement.

    ``offer`` is what the planner was offered when it proposed; the samples see the same
    tools, with ``tool_choice`` naming ``final_answer`` (the embedded model then keeps the
    prompt, and its saved state, and only constrains the reply). A sample that fails (a server
    error, an unreadable reply, another tool called) is recorded and left out; the answer never
    fails because a sample did. ``agreement`` is None when no sample came back.
    """
    out = Samples()
    if not any(t["function"]["name"] == FINAL_ANSWER_TOOL for t in offer):
        offer = [*offer, final_answer_schema([])]
    bound = llm.bind_tools(offer, tool_choice=FINAL_ANSWER_TOOL)
    parsed = bool(getattr(llm, "returns_parsed_tool_calls", False))
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            answer = _answer_of(bound.invoke(prompt, temperature=temperature), offer, parsed)
        except Exception as exc:  # one bad sample must not cost the answer
            out.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            continue
        if answer is None:
            out.errors.append("the sampled reply had no answer")
        else:
            out.answers.append(answer)
    out.elapsed_s = time.perf_counter() - t0
    out.agreement = agreement_share(question, proposal, out.answers)
    return out
