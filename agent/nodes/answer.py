"""*answer*: the validated ``Answer`` — supported claims only, a confidence, or an abstention.

When the planner's proposal survived *rethink*, its supported claims become the findings and
its confidence is pooled with the cited tools' scores. When no supported answer was reached
(budget spent, nothing citable), the agent abstains and reports what the tools did find, each
line citing its evidence: it answers with what it knows and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent.answer import Answer, Claim, FinalAnswerArgs
from agent.checks import review
from agent.context import AgentContext
from agent.state import AgentState
from prompts import load_prompt
from tools.confidence import combine_confidence


def compose_answer(state: AgentState, ctx: AgentContext) -> Answer:
    """Build the final ``Answer`` from the state's proposal and evidence."""
    evidence = state.get("evidence") or []
    ok = [e for e in evidence if e.status == "ok"]
    proposal: FinalAnswerArgs | None = state.get("proposal")
    exhausted = bool(state.get("budget_exhausted"))
    result = review(proposal, evidence) if proposal is not None else None
    contradictions = result.contradictions if result else []
    notes = [f"dropped unsupported claim: {s}" for s in (result.dropped if result else [])]
    if exhausted:
        notes.append(f"the round budget ({ctx.max_rounds}) ran out")

    if proposal is not None and result is not None and result.supported:
        cited = {i for c in result.supported for i in c.evidence_ids}
        scores = [e.score for e in ok if e.id in cited and e.score is not None]
        conf = combine_confidence(
            proposal.confidence,
            scores,
            contradictions=len(contradictions),
            dropped_claims=len(result.dropped),
        )
        abstained = conf < ctx.abstain_below
        text = proposal.answer.strip() or "; ".join(c.statement for c in result.supported)
        if abstained:
            text = f"Uncertain (confidence {conf:.2f}): {text} This needs review by a radiologist."
        return Answer(
            text=text,
            findings=result.supported,
            confidence=conf,
            abstained=abstained,
            contradictions=contradictions,
            budget_exhausted=exhausted,
            notes=notes,
        )

    reason = (
        "The round budget ran out before a supported answer."
        if exhausted
        else "The evidence does not support an answer."
    )
    text = (
        load_prompt("abstain")
        .render(reason=reason, evidence="\n".join(f"- {e.for_prompt()}" for e in ok) or "- nothing")
        .strip()
    )
    findings = [Claim(statement=e.summary, evidence_ids=[e.id]) for e in ok]
    scores = [e.score for e in ok if e.score is not None]
    conf = min(combine_confidence(None, scores), ctx.abstain_below) if ok else 0.0
    return Answer(
        text=text,
        findings=findings,
        confidence=conf,
        abstained=True,
        contradictions=contradictions,
        budget_exhausted=exhausted,
        notes=notes,
    )


def make_answer(default: AgentContext) -> Callable[..., Any]:
    """Build the answer node."""

    def answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        ctx = runtime.context or default
        ans = compose_answer(state, ctx)
        step = {
            "turn": int(state.get("turn") or 0),
            "round": int(state.get("round") or 0),
            "step": "answer",
            "confidence": ans.confidence,
            "abstained": ans.abstained,
            "budget_exhausted": ans.budget_exhausted,
        }
        return {"answer": ans, "messages": [AIMessage(content=ans.text)], "trace": [step]}

    return answer
