"""*rethink*: hold the proposed answer against the evidence before anyone sees it.

Every claim must cite successful evidence whose numbers it repeats (``agent.trust.checks``), and
contradictions between tools are named. When something is missing and rounds remain, the loop
goes back to *think* with the problems spelled out; otherwise on to *answer*, which keeps only
the supported claims.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from agent.answer import FINAL_ANSWER_TOOL, FinalAnswerArgs
from agent.context import AgentContext
from agent.state import AgentState, current_question
from agent.trace import RethinkStep
from agent.trust.calibration import domain_of
from agent.trust.checks import review
from prompts import load_prompt


def _final_call_id(state: AgentState) -> str | None:
    messages = state.get("messages") or []
    last = messages[-1] if messages else None
    if isinstance(last, AIMessage):
        for tc in last.tool_calls:
            if tc["name"] == FINAL_ANSWER_TOOL:
                return tc["id"]
    return None


def _conflict_persists(state: AgentState, turn: int, problems: list[str],
                       conflicts: list[str], defects: list[str] | None = None) -> bool:
    """Whether this turn's planner was already told of one of these conflicts, and repeats it.

    A planner that answers against its evidence again after the conflict was named will not
    be argued round (measured on real items: SmolLM2 repeated "No." to evidence answering yes
    until its five rounds were spent, 170 s); the answer node then abstains and says why. A
    defect (``ReviewResult.defects``) persists when one of its kind was named before (a loop
    repeats other words the second time).
    """
    if not conflicts and not defects:
        return False
    told = _told(state, turn)
    if any(p in told for p in problems if any(p.startswith(c) for c in conflicts)):
        return True
    kinds = {" ".join(d.split()[:3]) for d in defects or []}
    return any(t.startswith(k) for t in told for k in kinds)


def _told(state: AgentState, turn: int) -> set[str]:
    """The problems rethink already named to this turn's planner."""
    told: set[str] = set()
    for step in state.get("trace") or []:
        if step.get("step") == "rethink" and step.get("turn") == turn:
            told.update(cast("RethinkStep", step)["problems"])
    return told


_STATED = re.compile(r" states [-+0-9.eE, ]+, which ")


def _problem_key(problem: str) -> str:
    """A problem without the numbers an unsupported claim stated (``checks.check_claim``).

    The same claim sent back again for numbers no evidence holds is the same problem, however
    many numbers it now states: the small planner copied the feedback into its next claim
    ("... states 1, 1, 1, 1, which E1 do not contain"), each time with more of them, so no two
    rounds' problems were equal and it spent all five calls (117 s on a dev item).
    """
    return _STATED.sub(" states (numbers), which ", problem)


def _repeats_rejected(state: AgentState, turn: int, problems: list[str]) -> bool:
    """Whether every problem of this proposal was already named to this turn's planner.

    Then the proposal was sent back before and comes again unmended, and naming the problem
    again will not mend it: on real items the small planner proposed "The density of the wall
    of the aorta is 5.1 mm." five times over a ``case_answer`` that had no answer, each time
    sent back for a number no evidence holds, until the round budget was spent (9 of 155
    items spent all five calls proposing, with no tool called: 32-117 s each). Problems are
    compared without the numbers an unsupported claim stated (``_problem_key``).
    """
    told = {_problem_key(p) for p in _told(state, turn)}
    return bool(problems) and {_problem_key(p) for p in problems} <= told


def make_rethink(default: AgentContext) -> Callable[..., Any]:
    """Build the rethink node."""

    def rethink(
        state: AgentState, runtime: Runtime[AgentContext]
    ) -> Command[Literal["think", "answer"]]:
        ctx = runtime.context or default
        proposal = state.get("proposal") or FinalAnswerArgs(answer="", claims=[], confidence=0.0)
        result = review(proposal, state.get("evidence") or [], current_question(state),
                        domain_of(state.get("image_refs") or []))
        rnd, turn = int(state.get("round") or 0), int(state.get("turn") or 0)
        step = RethinkStep(turn=turn, round=rnd, step="rethink", decision="answer",
                           supported=len(result.supported), problems=result.problems,
                           contradictions=result.contradictions)
        call_id = _final_call_id(state)
        spent = rnd >= ctx.max_rounds
        if result.ok or spent or _conflict_persists(
                state, turn, result.problems, result.conflicts, result.defects
        ) or _repeats_rejected(state, turn, result.problems):
            msgs = []
            if call_id:
                msgs.append(
                    ToolMessage(
                        content="accepted"
                        if result.ok
                        else "answering with the supported claims: " + (
                            "budget spent" if spent
                            else "the answer still contradicts its evidence"
                            if result.conflicts else "the answer still cannot be used"),
                        tool_call_id=call_id,
                        name=FINAL_ANSWER_TOOL,
                    )
                )
            step["decision"] = "answer"
            return Command(
                goto="answer",
                # stopped early, the answer says why (a conflict, a repeat), not "budget"
                update={"messages": msgs, "trace": [step],
                        "budget_exhausted": not result.ok and spent},
            )
        feedback = load_prompt("rethink").render(
            problems="\n".join(f"- {p}" for p in result.problems)
        )
        msgs = []
        if call_id:
            msgs.append(
                ToolMessage(
                    content=feedback, tool_call_id=call_id, name=FINAL_ANSWER_TOOL, status="error"
                )
            )
        step["decision"] = "think"
        return Command(
            goto="think", update={"messages": msgs, "feedback": [feedback], "trace": [step]}
        )

    return rethink
