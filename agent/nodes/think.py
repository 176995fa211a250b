"""*think*: the planner reads the question, the images and the evidence, and acts or proposes.

The model sees a compact prompt rebuilt every round — the system prompt with the image
summaries, the numbered evidence and rethink's feedback, then the conversation's earlier
questions and answers, then the current question — rather than the raw tool-call transcript.
Small models keep their footing, every backend gets the same view, and the transcript stays in
the state for the UI.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from agent.answer import FINAL_ANSWER_TOOL, FinalAnswerArgs
from agent.context import AgentContext
from agent.llm import make_chat_model
from agent.llm.toolcalls import parse_tool_calls
from agent.planner.offer import offered_tools
from agent.planner.route import shared_router
from agent.state import AgentState
from prompts import load_prompt


def resolve_llm(ctx: AgentContext) -> BaseChatModel:
    """The context's chat model: a given instance, or the backend its spec names."""
    if isinstance(ctx.llm, BaseChatModel):
        return ctx.llm
    return make_chat_model(ctx.llm)


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


def build_prompt(state: AgentState, ctx: AgentContext) -> list[AnyMessage]:
    """The messages the planner reads this round."""
    refs = state.get("image_refs") or []
    evidence = state.get("evidence") or []
    feedback = state.get("feedback") or []
    history, question = split_turns(list(state.get("messages") or []))
    system = load_prompt("think").render(
        images="\n".join(r.for_prompt() for r in refs) or "(none)",
        evidence="\n".join(e.for_prompt() for e in evidence) or "(none yet)",
        feedback="\n".join(feedback),
        rounds_left=ctx.max_rounds - int(state.get("round") or 0),
    )
    return [SystemMessage(content=system), *history, HumanMessage(content=question)]


SMALL_PLANNER_ROUTE = 2
"""Most tools a planner that prefers routing is offered per round (besides final_answer and
mask follow-ups). The runner-up comes only when it scores within the router's margin of the
best: a clear match is offered alone, a close call leaves the planner the choice."""


def route_top_k(ctx: AgentContext, llm: BaseChatModel) -> int:
    """How many routed tools to offer this planner; 0 for all of them."""
    if ctx.route_tools is not None:
        return ctx.route_tools
    return SMALL_PLANNER_ROUTE if getattr(llm, "prefers_tool_routing", False) else 0


def earlier_question(messages: list[AnyMessage]) -> str | None:
    """The user's previous question in this thread, if any (follow-ups lean on it)."""
    humans = [str(m.content) for m in messages if isinstance(m, HumanMessage)]
    return humans[-2] if len(humans) >= 2 else None


def round_offer(
    tools: list[Any], state: AgentState, ctx: AgentContext, llm: BaseChatModel
) -> tuple[list[dict[str, Any]], dict[str, float] | None, str]:
    """The tool schemas offered this round, the router's scores, and why routing failed.

    Scores are None when routing is off; the error is "" unless the router failed, in which
    case every tool is offered. *answer* calls this too, so sampled answers see the same offer
    (and, on the embedded model, reuse the prompt's saved state).
    """
    offer = offered_tools(tools, state.get("image_refs") or [], state.get("evidence") or [])
    top_k = route_top_k(ctx, llm)
    if not top_k:
        return offer, None, ""
    messages = list(state.get("messages") or [])
    _, question = split_turns(messages)
    try:
        routed_offer, scores = shared_router(top_k).route(
            offer, question, earlier_question(messages))
    except Exception as exc:  # routing is an aid: without it every tool is offered
        return offer, {}, f"tool routing failed, every tool offered: {exc}"
    return routed_offer, scores, ""


def _with_parsed_calls(ai: AIMessage, tools: list[dict[str, Any]]) -> AIMessage:
    """Recover tool calls a model wrote as JSON text instead of calling natively."""
    if ai.tool_calls or ai.invalid_tool_calls or not isinstance(ai.content, str):
        return ai
    parsed = parse_tool_calls(ai.content, tools)
    if not parsed.calls and not parsed.invalid:
        return ai
    return AIMessage(
        content=ai.content,
        tool_calls=parsed.calls,
        invalid_tool_calls=parsed.invalid,
        id=ai.id,
        response_metadata=ai.response_metadata,
    )


def _ensure_ids(ai: AIMessage) -> AIMessage:
    """Every tool call needs an id for its ToolMessage; some servers omit them."""
    if all(tc.get("id") for tc in ai.tool_calls):
        return ai
    calls = [{**tc, "id": tc.get("id") or f"call_{uuid.uuid4().hex[:12]}"} for tc in ai.tool_calls]
    return ai.model_copy(update={"tool_calls": calls})


Next = Literal["act", "rethink", "answer", "think"]


def make_think(default: AgentContext, tools: list[Any]) -> Callable[..., Any]:
    """Build the think node for a fixed tool list."""

    def think(state: AgentState, runtime: Runtime[AgentContext]) -> Command[Next]:
        ctx = runtime.context or default
        rnd = int(state.get("round") or 0)
        turn = int(state.get("turn") or 0)
        if rnd >= ctx.max_rounds:
            return Command(goto="answer", update={"budget_exhausted": True})
        llm = resolve_llm(ctx)
        offer, routed, route_error = round_offer(tools, state, ctx, llm)
        t0 = time.perf_counter()
        reply = llm.bind_tools(offer).invoke(build_prompt(state, ctx))
        elapsed = time.perf_counter() - t0
        ai = reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply.content))
        ai = _ensure_ids(_with_parsed_calls(ai, offer))
        step: dict[str, Any] = {
            "turn": turn,
            "round": rnd + 1,
            "step": "think",
            "elapsed_s": round(elapsed, 4),
            "calls": [tc["name"] for tc in ai.tool_calls],
        }
        if routed is not None:
            step["routed"] = routed
            if route_error:
                step["route_error"] = route_error
        base: dict[str, Any] = {"round": rnd + 1, "messages": [ai]}

        finals = [tc for tc in ai.tool_calls if tc["name"] == FINAL_ANSWER_TOOL]
        actions = [tc for tc in ai.tool_calls if tc["name"] != FINAL_ANSWER_TOOL]
        if actions:
            if finals:  # look first; the answer is proposed again once the results are in
                ai = ai.model_copy(update={"tool_calls": actions})
                base["messages"] = [ai]
            return Command(goto="act", update={**base, "trace": [step]})
        if finals:
            try:
                proposal = FinalAnswerArgs.model_validate(finals[0]["args"])
            except ValueError as exc:
                fb = [f"your final_answer arguments were invalid: {exc}".splitlines()[0]]
                step["error"] = fb[0]
                return Command(goto="think", update={**base, "feedback": fb, "trace": [step]})
            return Command(goto="rethink", update={**base, "proposal": proposal, "trace": [step]})
        if ai.invalid_tool_calls:
            errors = [
                f"your tool call was malformed: {c.get('error')}" for c in ai.invalid_tool_calls
            ]
            step["error"] = "; ".join(errors)
            return Command(goto="think", update={**base, "feedback": errors, "trace": [step]})
        # Plain text: a proposal with no cited claims; rethink asks for evidence.
        proposal = FinalAnswerArgs(answer=str(ai.content)[:1200], claims=[], confidence=0.5)
        return Command(goto="rethink", update={**base, "proposal": proposal, "trace": [step]})

    return think
