"""The prompt the planner reads each round, rebuilt from the state.

The model sees a compact prompt rebuilt every round — the system prompt (``prompts/think``) with
the image summaries, the numbered evidence and rethink's feedback, then the conversation's
earlier questions and answers, then the current question — rather than the raw tool-call
transcript. Small models keep their footing, every backend gets the same view, and the
transcript stays in the state for the UI. *think* asks with it; *answer* asks again with it when
it samples answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage

from agent.context import AgentContext
from agent.state import AgentState
from prompts import load_prompt
from tools.evidence import Evidence

__all__ = ["build_prompt", "earlier_question", "known_calls", "split_turns"]


def split_turns(messages: list[AnyMessage]) -> tuple[list[AnyMessage], str]:
    """Earlier turns' questions and final answers, and the current question."""
    question = ""
    last_human = -1
    for i, m in enumerate(messages):
        if isinstance(m, HumanMessage):
            last_human = i
    if last_human >= 0:
        question = str(messages[last_human].content)
    history: list[AnyMessage] = []
    for m in messages[: max(last_human, 0)]:
        if isinstance(m, HumanMessage):
            history.append(HumanMessage(content=str(m.content)))
        elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
            history.append(AIMessage(content=str(m.content)))
    return history, question


def earlier_question(messages: list[AnyMessage]) -> str | None:
    """The user's previous question in this thread, if any (follow-ups lean on it)."""
    humans = [str(m.content) for m in messages if isinstance(m, HumanMessage)]
    return humans[-2] if len(humans) >= 2 else None


def known_calls(evidence: Sequence[Evidence]) -> str:
    """What the tools have already answered, said once, or "" when nothing has.

    The Qwen planners called a tool that had already answered again and again (issue 15): the
    offer now withholds such calls (``agent.planner.offer``), and the prompt says why, in the
    planner's terms: which tool ran on which image and where its answer is.
    """
    done: dict[tuple[str, str], list[str]] = {}
    for e in evidence:
        if e.status == "ok":
            where = e.image_id or str(e.args.get("image_id") or "")
            done.setdefault((e.tool, where), []).append(e.id)
    if not done:
        return ""
    parts = [f"{tool} on {image} ({', '.join(ids)})" if image else f"{tool} ({', '.join(ids)})"
             for (tool, image), ids in done.items()]
    return ("Already done, the same call gives the same result: " + "; ".join(parts)
            + ". If that evidence answers the question, call final_answer citing it; if not, "
              "call a different tool.")


def build_prompt(state: AgentState, ctx: AgentContext) -> list[AnyMessage]:
    """The messages the planner reads this round."""
    refs = state.get("image_refs") or []
    evidence = state.get("evidence") or []
    feedback = state.get("feedback") or []
    history, question = split_turns(list(state.get("messages") or []))
    system = load_prompt("think").render(
        images="\n".join(r.for_prompt() for r in refs) or "(none)",
        evidence="\n".join(e.for_prompt() for e in evidence) or "(none yet)",
        known=known_calls(evidence),
        feedback="\n".join(feedback),
        rounds_left=ctx.max_rounds - int(state.get("round") or 0),
    )
    return [SystemMessage(content=system), *history, HumanMessage(content=question)]
