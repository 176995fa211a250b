"""*think*: the planner reads the question, the images and the evidence, and acts or proposes.

The node orchestrates: the round's offer (``agent.planner.offer``, routed by
``agent.planner.route`` for planners that want it), the prompt (``agent.planner.prompt``), one
call of the backend, and where the reply leads — *act* for tool calls, *rethink* for a proposed
answer, back to *think* with feedback for a malformed call. Before the planner's first call of
a turn it asks the always-offered experts the question itself, with no planner call
(``consult_calls``). The backends return replies whose calls are already parsed
(``tool_calls`` / ``invalid_tool_calls``, ``agent.llm``); only a chat model from elsewhere (a
test's scripted fake, a LangChain model passed in ``AgentContext.llm``) gets its text read for
calls here, through the same text protocol.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall
from langgraph.runtime import Runtime
from langgraph.types import Command

from agent.answer import FINAL_ANSWER_TOOL, FinalAnswerArgs
from agent.context import AgentContext
from agent.llm import make_chat_model
from agent.llm.text_protocol import reply_with_tool_calls
from agent.planner.offer import bind_answer, offered_tools, tool_catalogue
from agent.planner.prompt import build_prompt, earlier_question, split_turns
from agent.planner.route import shared_router
from agent.state import AgentState, current_question
from agent.trace import ThinkStep, steps_of
from agent.trust.agreement import (
    bears_on,
    could_carry,
    evidence_lead,
    same_question,
    speaks_to,
    unanswerable,
)
from agent.trust.calibration import CLINICAL, domain_of
from agent.trust.checks import DEFECT_ADVICE

__all__ = ["FRUITLESS_ROUNDS", "SMALL_PLANNER_ROUTE", "build_prompt", "consult_calls",
           "fruitless_stop", "make_think", "resolve_llm", "round_offer", "route_top_k"]


def resolve_llm(ctx: AgentContext) -> BaseChatModel:
    """The context's chat model: a given instance, or the backend its spec names."""
    if isinstance(ctx.llm, BaseChatModel):
        return ctx.llm
    return make_chat_model(ctx.llm, threads=ctx.llm_threads, temperature=ctx.llm_temperature,
                           home=ctx.home_dir)


SMALL_PLANNER_ROUTE = 2
"""Most tools a planner that prefers routing is offered per round (besides final_answer and
mask follow-ups). The runner-up comes only when it scores within the router's margin of the
best: a clear match is offered alone, a close call leaves the planner the choice."""


def route_top_k(ctx: AgentContext, llm: BaseChatModel) -> int:
    """How many routed tools to offer this planner; 0 for all of them."""
    if ctx.route_tools is not None:
        return ctx.route_tools
    return SMALL_PLANNER_ROUTE if getattr(llm, "prefers_tool_routing", False) else 0


def round_offer(
    tools: list[Any], state: AgentState, ctx: AgentContext, llm: BaseChatModel
) -> tuple[list[dict[str, Any]], dict[str, float] | None, str]:
    """The tool schemas offered this round, the router's scores, and why routing failed.

    Scores are None when routing is off; the error is "" unless the router failed, in which
    case every tool is offered. *answer* calls this too, so sampled answers see the same offer
    (and, on the embedded model, reuse the prompt's saved state).
    """
    evidence = state.get("evidence") or []
    messages = list(state.get("messages") or [])
    _, question = split_turns(messages)
    images = state.get("image_refs") or []
    clinical = domain_of(images) == CLINICAL
    asked = [e for e in evidence if e.status == "ok" and "question" in e.args
             and same_question(str(e.args["question"]), question)]
    offer = bind_answer(offered_tools(tools, images, evidence, lambda ev: speaks_to(
                            ev, question) and (not clinical or bears_on(ev, question)), asked),
                        evidence_lead(question, evidence))
    experts = unasked_experts(tools, state, offer, question)
    if experts:
        return experts, None, ""
    top_k = route_top_k(ctx, llm)
    if not top_k:
        return offer, None, ""
    try:
        routed_offer, scores = shared_router(top_k).route(
            offer, question, earlier_question(messages))
    except Exception as exc:  # routing is an aid: without it every tool is offered
        return offer, {}, f"tool routing failed, every tool offered: {exc}"
    kept = {s["function"]["name"] for s in routed_offer}
    routed_offer = [s for s in offer if s["function"]["name"] in kept | _always(tools)]
    return routed_offer, scores, ""


def _always(tools: list[Any]) -> set[str]:
    """The tools offered beside whatever the router picks (the expert on real questions)."""
    return {t.name for t in tools if (getattr(t, "metadata", None) or {}).get("always_offered")}


def unasked_experts(tools: list[Any], state: AgentState, offer: list[dict[str, Any]],
                    question: str) -> list[dict[str, Any]]:
    """The offer cut to the always-offered tools not yet asked, after a baseless answer.

    When rethink last sent the answer back because it stood on nothing that bears on the
    question (``DEFECT_ADVICE``: readings of a JPEG's pixels, evidence outside its tools'
    domains), and an always-offered tool (``case_answer``) in the offer has not been asked
    this question, only those tools are offered: on 320 real items the small planner, told
    so, proposed the same answer again from ``describe_image`` or ``read_text`` 35 times,
    never calling the expert, and the agent abstained. Otherwise ``[]``.
    """
    trace = state.get("trace") or []
    last = trace[-1] if trace else None
    if (last is None or last.get("step") != "rethink" or last.get("decision") != "think"
            or last.get("turn") != int(state.get("turn") or 0)
            or not any(DEFECT_ADVICE in str(p) for p in cast("list[str]",
                                                             last.get("problems") or []))):
        return []
    done = {e.tool for e in state.get("evidence") or []
            if same_question(str(e.args.get("question", question)), question)}
    left = _always(tools) - done
    return [s for s in offer if s["function"]["name"] in left]


def consult_calls(tools: list[Any], offer: list[dict[str, Any]], state: AgentState,
                  limit: int) -> list[ToolCall]:
    """The calls that ask the always-offered experts the question, before the planner's first.

    One call per image the turn brought (the conversation's latest images when it brought
    none) that the offer lets the expert take, at most ``limit``; ``[]`` once this turn has
    consulted, when there is no question, or for a tool that needs more than an image and the
    question. On 640 real items the small planner's first call was ``case_answer`` on 522, and
    112 of the other 118 called it after another tool (``describe_image``, ``classify``,
    ``find``): asked first, the planner starts from the expert's answer and the call it would
    have spent choosing it is saved.
    """
    question = current_question(state)
    turn = int(state.get("turn") or 0)
    trace = state.get("trace") or []
    if not question.strip() or any(s.get("consulted") for s in steps_of(trace, "think", turn)):
        return []
    brought = [s["images"] for s in steps_of(trace, "ingest") if s["images"]]
    latest = brought[-1] if brought else [r.id for r in state.get("image_refs") or []]
    calls: list[ToolCall] = []
    for spec in offer:
        fn = spec["function"]
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        if (fn["name"] not in _always(tools) or "question" not in props
                or set(params.get("required") or []) - {"image_id", "question"}):
            continue
        if "image_id" not in props:
            calls.append(_call(fn["name"], {"question": question}))
            continue
        allowed = props["image_id"].get("enum") or []
        calls += [_call(fn["name"], {"image_id": i, "question": question})
                  for i in latest if i in allowed]
    return calls[:limit]


FRUITLESS_ROUNDS = 2
"""Planner rounds of tool calls that may bring nothing usable, after a tool declined the
question, before *think* stops asking (``fruitless_stop``)."""


def fruitless_stop(state: AgentState, rounds: int | None = None) -> str:
    """Why to stop asking the planner: a decline stands and its last tool rounds found nothing.

    A tool asked this very question declined it (``unanswerable``: ``case_answer`` withheld
    its cases' answer, or the image is unlike every library image), and each of the planner's
    last ``rounds`` calls this turn went to tools whose results could not carry an answer
    beside that decline (``could_carry``: readings of a JPEG's pixels, evidence flagged
    outside its tool's domain, trained heads' modality for a question about a finding,
    errors). The answer can then only abstain, and every further round would end the same way
    after another planner call: shown a uniform grey picture, the small planner called
    ``classify``, ``measure_lungs``, ``window`` and ``describe_image`` in turn until its five
    rounds were spent (72 items of the blank baseline: 4.8 planner calls each, to abstain on
    70). With the stop, paired on 11 of them: 4.55 -> 2.18 planner calls, median 83 -> 37 s on
    a loaded machine, all 11 abstaining either way. ``""`` otherwise, and always while a
    round proposed an answer instead (*rethink* judges those). ``rounds`` defaults to
    ``FRUITLESS_ROUNDS``.
    """
    rounds = FRUITLESS_ROUNDS if rounds is None else rounds
    question = current_question(state)
    turn = int(state.get("turn") or 0)
    trace = state.get("trace") or []
    asked = [s for s in steps_of(trace, "think", turn)
             if not s.get("consulted") and not s.get("stopped")]
    if rounds < 1 or len(asked) < rounds or not question.strip():
        return ""
    evidence = state.get("evidence") or []
    ok = [e for e in evidence if e.status == "ok"]
    declined = unanswerable(question, ok, [])
    if declined is None:
        return ""
    by_id = {e.id: e for e in evidence}
    clinical = domain_of(state.get("image_refs") or []) == CLINICAL
    acts = steps_of(trace, "act", turn)
    for step in asked[-rounds:]:
        got = [by_id[a["evidence_id"]] for a in acts
               if a["round"] == step["round"] and a["evidence_id"] in by_id]
        if not got or any(could_carry(e, question, clinical) for e in got):
            return ""
    return (f"{declined.id} ({declined.tool}) declined this question, and the planner's last "
            f"{rounds} rounds of tool calls found nothing that could answer it")


def _call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(name=name, args=args, id=f"call_{uuid.uuid4().hex[:12]}", type="tool_call")


def _reply(llm: BaseChatModel, offer: list[dict[str, Any]], prompt: list[Any],
           catalogue: list[dict[str, Any]] | None = None) -> AIMessage:
    """The planner's reply with its calls: as the backend parsed them, or read from its text.

    Every call gets an id, which its ToolMessage needs; some servers omit them. A backend
    that ``reads_tool_catalogue`` (the embedded one) also gets every tool of the node
    (``tool_catalogue``): it describes those in a prompt that stays the same round after
    round, and allows only the offered ones.
    """
    extra: dict[str, Any] = ({"tool_catalogue": catalogue}
                             if catalogue and getattr(llm, "reads_tool_catalogue", False)
                             else {})
    reply = llm.bind_tools(offer, **extra).invoke(prompt)
    ai = reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply.content))
    if not getattr(llm, "returns_parsed_tool_calls", False):  # not one of medloop's backends
        ai = reply_with_tool_calls(ai, offer)
    if all(tc.get("id") for tc in ai.tool_calls):
        return ai
    calls = [{**tc, "id": tc.get("id") or f"call_{uuid.uuid4().hex[:12]}"} for tc in ai.tool_calls]
    return ai.model_copy(update={"tool_calls": calls})


Next = Literal["act", "rethink", "answer", "think"]


def make_think(default: AgentContext, tools: list[Any]) -> Callable[..., Any]:
    """Build the think node for a fixed tool list."""
    catalogue = tool_catalogue(tools)

    def think(state: AgentState, runtime: Runtime[AgentContext]) -> Command[Next]:
        ctx = runtime.context or default
        rnd = int(state.get("round") or 0)
        if rnd >= ctx.max_rounds:
            return Command(goto="answer", update={"budget_exhausted": True})
        llm = resolve_llm(ctx)
        offer, routed, route_error = round_offer(tools, state, ctx, llm)
        stop = fruitless_stop(state) if offer else "no tool left to call and no evidence to cite"
        if stop:  # asking the planner again is moot: the answer abstains and says why
            return Command(goto="answer", update={"trace": [ThinkStep(
                turn=int(state.get("turn") or 0), round=rnd, step="think", elapsed_s=0.0,
                calls=[], stopped=stop)]})
        consult = consult_calls(tools, offer, state, ctx.max_parallel_tools) if (
            ctx.consult_experts and rnd == 0) else []
        if consult:  # no planner call: the round budget is the planner's
            return Command(goto="act", update={
                "messages": [AIMessage(content="", tool_calls=consult)],
                "trace": [ThinkStep(turn=int(state.get("turn") or 0), round=rnd, step="think",
                                    elapsed_s=0.0, calls=[c["name"] for c in consult],
                                    consulted=True)]})
        t0 = time.perf_counter()
        ai = _reply(llm, offer, build_prompt(state, ctx), catalogue)
        step = ThinkStep(turn=int(state.get("turn") or 0), round=rnd + 1, step="think",
                         elapsed_s=round(time.perf_counter() - t0, 4),
                         calls=[tc["name"] for tc in ai.tool_calls])
        if routed is not None:
            step["routed"] = routed
            if route_error:
                step["route_error"] = route_error
        return _route_reply(ai, step, {"round": rnd + 1, "messages": [ai]})

    return think


def _route_reply(ai: AIMessage, step: ThinkStep, base: dict[str, Any]) -> Command[Next]:
    """Where the reply leads: tools to *act*, a proposal to *rethink*, a bad call back here."""
    finals = [tc for tc in ai.tool_calls if tc["name"] == FINAL_ANSWER_TOOL]
    actions = [tc for tc in ai.tool_calls if tc["name"] != FINAL_ANSWER_TOOL]
    if actions:
        if finals:  # look first; the answer is proposed again once the results are in
            base["messages"] = [ai.model_copy(update={"tool_calls": actions})]
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
        errors = [f"your tool call was malformed: {c.get('error')}" for c in ai.invalid_tool_calls]
        step["error"] = "; ".join(errors)
        return Command(goto="think", update={**base, "feedback": errors, "trace": [step]})
    # Plain text: a proposal with no cited claims; rethink asks for evidence.
    proposal = FinalAnswerArgs(answer=str(ai.content)[:1200], claims=[], confidence=0.5)
    return Command(goto="rethink", update={**base, "proposal": proposal, "trace": [step]})
