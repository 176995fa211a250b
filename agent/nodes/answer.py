"""*answer*: the validated ``Answer`` — supported claims only, a confidence, or an abstention.

When the planner's proposal survived *rethink*, its supported claims become the findings and
its confidence is pooled with the cited tools' scores. When no supported answer was reached
(budget spent, nothing citable), the agent abstains and reports what the tools did find, each
line citing its evidence: it answers with what it knows and says so.

Calibration: the pooled (raw) confidence goes through the calibration map fitted for this
model configuration (``medloop eval ... --save-calibration``), and the abstention threshold
fitted with it replaces ``ctx.abstain_below``. A map is fitted on one domain of images
(``phantom`` or ``clinical``, ``agent.trust.calibration.domain_of``) and applied only to
questions about that domain: a map fitted on phantoms never calibrates a clinical answer. It is
looked up by the ``llm`` spec and the domain, ``$MEDLOOP_HOME/calibration/<spec>.<domain>.json``
then ``<spec>.json`` (when its recorded domain matches), then the shipped ones in
``agent/calibration/``; ``AgentContext.calibration`` names a file to use instead (still only on
its own domain), or ``none`` for raw confidences. Inside a map, the map of the question's form
(closed or open, ``question_form``) applies when it has one. Without a map for the domain the
confidence stays raw and the answer's notes say so. The raw value is kept in the trace, so a
calibration can be refitted from any run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent.answer import Answer, Claim, FinalAnswerArgs
from agent.context import AgentContext
from agent.llm import canonical_spec
from agent.nodes.act import refused_for_domain
from agent.nodes.think import resolve_llm, round_offer
from agent.planner.offer import unfit_tools
from agent.planner.prompt import build_prompt
from agent.state import AgentState, current_question
from agent.trace import AnswerStep, steps_of
from agent.trust.agreement import unanswerable
from agent.trust.calibration import (
    CLINICAL,
    Calibration,
    domain_of,
    load_calibration,
    question_form,
)
from agent.trust.checks import review
from agent.trust.confidence import answer_form_score, combine_confidence, evidence_consistency
from agent.trust.consistency import Samples, sample_answers
from prompts import load_prompt

_SHIPPED = Path(__file__).resolve().parent.parent / "calibration"


@lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> Calibration | None:
    return load_calibration(path)


def _cached(path: Path) -> Calibration | None:
    try:
        return _load(str(path), path.stat().st_mtime)
    except FileNotFoundError:
        return None


def calibration_for(ctx: AgentContext, domain: str | None = None) -> Calibration | None:
    """The calibration map for ``ctx``'s model configuration and ``domain``, or None (raw).

    ``domain`` is the image domain of the question (``agent.trust.calibration.domain_of`` over
    the state's ``image_refs``): a map fitted on another domain is never applied, not even one
    named by ``ctx.calibration``, so a phantom map cannot speak for a clinical image. The map
    for a domain is looked up as ``<spec>.<domain>.json``, then as ``<spec>.json`` (kept when its
    recorded domain matches), first under ``$MEDLOOP_HOME/calibration/``, then among the shipped
    maps. ``domain=None`` skips the domain check: for inspecting a map, never for answering.
    """
    chosen = str(ctx.calibration or "").strip()
    if chosen:
        if chosen.lower() == "none":
            return None
        cal = _cached(Path(chosen))
        if cal is None:
            raise FileNotFoundError(f"calibration file {chosen} does not exist")
        return cal if domain is None or cal.domain == domain else None
    if not isinstance(ctx.llm, str):
        return None
    names = [calibration_name(ctx.llm, ctx.answer_samples, d)
             for d in dict.fromkeys([domain, None])]
    for folder in (ctx.home_dir / "calibration", _SHIPPED):
        for name in names:
            cal = _cached(folder / name)
            if cal is not None and (domain is None or cal.domain == domain):
                return cal
    return None


def calibration_name(llm: str, answer_samples: int = 0, domain: str | None = None) -> str:
    """The file name a calibration for the ``llm`` spec (and image ``domain``) is saved under.

    Keyed by the planner the spec runs (``embedded`` is ``embedded:smollm2-135m`` today, and
    the default can change: a map fitted for one planner must not calibrate another).
    Sampling extra answers changes what the raw confidence means, so a configuration that
    samples has its own file (``embedded-smollm2-135m-sc3.json``); so does each domain
    (``embedded-smollm2-135m.clinical.json``).
    """
    stem = re.sub(r"[^A-Za-z0-9]+", "-", canonical_spec(llm)).strip("-").lower()
    stem = f"{stem}-sc{answer_samples}" if answer_samples else stem
    return f"{stem}.{domain}.json" if domain else f"{stem}.json"


def compose_answer(
    state: AgentState, ctx: AgentContext, calibration: Calibration | None = None,
    agreement: float | None = None, domain: str | None = None,
    unfit: dict[str, str] | None = None,
) -> tuple[Answer, float]:
    """Build the final ``Answer`` from the state's proposal and evidence.

    ``agreement`` is the self-consistency of the proposal (``agent.trust.consistency``), pooled into
    the confidence when given. ``domain`` is the images' (``domain_of``; None reads it off the
    state): an answer with a defect on it (``ReviewResult.defects``) is not given. ``unfit``
    names the tools whose domains refuse the images (``unfit_tools``): an abstention names them
    beside the tools that refused when called. Returns the answer and its raw (uncalibrated)
    confidence.
    """
    domain = domain if domain is not None else domain_of(state.get("image_refs") or [])
    threshold = (calibration.abstain_below
                 if calibration is not None and calibration.abstain_below is not None
                 else ctx.abstain_below)
    evidence = state.get("evidence") or []
    ok = [e for e in evidence if e.status == "ok"]
    proposal: FinalAnswerArgs | None = state.get("proposal")
    exhausted = bool(state.get("budget_exhausted"))
    question = current_question(state)
    # closed and open questions have their own maps: their accuracies differ at a raw score
    cal = calibration.for_form(question_form(question)) if calibration is not None else None
    result = review(proposal, evidence, question, domain) if proposal is not None else None
    contradictions = result.contradictions if result else []
    defects = result.defects if result else []
    notes = [f"dropped unsupported claim: {s}" for s in (result.dropped if result else [])]
    if exhausted:
        notes.append(f"the round budget ({ctx.max_rounds}) ran out")
    stopped = [s["stopped"] for s in steps_of(state.get("trace") or [], "think",
                                              int(state.get("turn") or 0)) if s.get("stopped")]
    notes.extend(f"stopped before the round budget: {why}" for why in stopped[-1:])

    conflicts = result.conflicts if result else []
    declined = None
    if proposal is not None and result is not None and result.supported:
        cited_ids = {i for c in result.supported for i in c.evidence_ids}
        declined = unanswerable(question, ok, [e for e in ok if e.id in cited_ids])
        if declined is not None:
            notes.append(f"not answered: {declined.id} ({declined.tool}) declined this "
                         "question and no other evidence bears on it")
    if (proposal is not None and result is not None and result.supported and not conflicts
            and not defects and declined is None):
        cited = {i for c in result.supported for i in c.evidence_ids}
        scores = [e.score for e in ok if e.id in cited and e.score is not None]
        # Two checks of the answer itself: does it have the form the question asks for, and do
        # the facts it states match the evidence it cites.
        checks = [answer_form_score(question, result.answer),
                  evidence_consistency(result.answer,
                                       [e.summary for e in ok if e.id in cited])]
        raw = combine_confidence(
            proposal.confidence,
            [*scores, *(c for c in checks if c is not None)],
            contradictions=len(contradictions),
            dropped_claims=len(result.dropped),
            agreement=agreement,
        )
        conf = cal(raw) if cal is not None else raw
        abstained = conf < threshold
        notes.extend(f"mended: {m}" for m in result.mended)
        text = result.answer.strip() or "; ".join(c.statement for c in result.supported)
        if abstained:
            # a bare bound answer ("CT") ends its sentence before the note
            end = "" if text.endswith((".", "!", "?")) else "."
            text = (f"Uncertain (confidence {conf:.2f}): {text}{end} This needs review by a "
                    "radiologist.")
        return Answer(
            text=text,
            findings=result.supported,
            confidence=conf,
            abstained=abstained,
            contradictions=contradictions,
            conflicts=conflicts,
            budget_exhausted=exhausted,
            notes=notes,
        ), raw

    # An answer that still says the opposite of its evidence is not given at all: the user
    # sees what was observed and what did not agree. Without a usable answer, a tool that
    # declined this very question says best why (the planner may never have proposed one).
    declined = declined or unanswerable(question, ok, [])
    # What the answer did wrong comes after the decline, when a tool declined the question:
    # the planner's sentence ("No, both kidneys are visible.") was never the reason there is no
    # answer; that no tool could give one was.
    fault = ("contradicted its own evidence: " + "; ".join(conflicts) if conflicts
             else "could not be used: " + "; ".join(defects) if defects else "")
    if declined is not None:
        reason = (f"No offline tool can answer this question: {declined.id} ({declined.tool}) "
                  f"{declined.summary}")
        if fault:
            reason += f" The planner's own answer also {fault}."
    elif fault:
        reason = f"The proposed answer {fault}."
    elif exhausted:
        reason = "The round budget ran out before a supported answer."
    else:
        reason = "The evidence does not support an answer."
    refusals = {e.tool: refused_for_domain(e) for e in evidence if refused_for_domain(e)}
    refusals |= {t: why for t, why in (unfit or {}).items() if t not in refusals}
    if refusals:  # what could not be checked at all, and why
        reason += " Outside what these tools were built for: " + "; ".join(
            f"{tool} ({why})" for tool, why in refusals.items()) + "."
    # the evidence the reason quotes is not listed again beneath it
    others = [e for e in ok if declined is None or e.id != declined.id]
    listed = "\n".join(f"- {e.for_prompt()}" for e in others)
    text = (
        load_prompt("abstain")
        .render(reason=reason, evidence=listed or ("- nothing beyond the above" if ok
                                                   else "- nothing"))
        .strip()
    )
    findings = [Claim(statement=e.summary, evidence_ids=[e.id]) for e in ok]
    scores = [e.score for e in ok if e.score is not None]
    raw = min(combine_confidence(None, scores), ctx.abstain_below) if ok else 0.0
    conf = min(cal(raw), threshold) if cal is not None and ok else raw
    return Answer(
        text=text,
        findings=findings,
        confidence=conf,
        abstained=True,
        contradictions=contradictions,
        conflicts=conflicts,
        budget_exhausted=exhausted,
        notes=notes,
    ), raw


def _samples(state: AgentState, ctx: AgentContext, tools: list[Any]) -> Samples | None:
    """Sampled answers to the accepted proposal; None when there is no supported one.

    The prompt and the offer are rebuilt as *think* built them for the proposal (no tool has
    run since), so the samples answer the question the proposal answered.
    """
    proposal: FinalAnswerArgs | None = state.get("proposal")
    evidence = state.get("evidence") or []
    if proposal is None or not review(proposal, evidence, current_question(state)).supported:
        return None
    llm = resolve_llm(ctx)
    offer, _, _ = round_offer(tools, state, ctx, llm)
    return sample_answers(llm, build_prompt(state, ctx), offer, current_question(state),
                          proposal.answer, ctx.answer_samples, ctx.sample_temperature)


def make_answer(default: AgentContext, tools: list[Any] | None = None) -> Callable[..., Any]:
    """Build the answer node (``tools``: the planner's tools, for sampled answers)."""

    def answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        ctx = runtime.context or default
        # A map applies only to the domain it was fitted on: phantom maps never to clinical.
        domain = domain_of(state.get("image_refs") or [])
        cal = calibration_for(ctx, domain)
        samples = _samples(state, ctx, tools or []) if ctx.answer_samples else None
        # on a phantom every expert fitted on real cases is outside by design: not news
        ans, raw = compose_answer(state, ctx, cal,
                                  agreement=samples.agreement if samples else None,
                                  domain=domain,
                                  unfit=unfit_tools(tools or [], state.get("image_refs") or [])
                                  if domain == CLINICAL else None)
        step = AnswerStep(turn=int(state.get("turn") or 0), round=int(state.get("round") or 0),
                          step="answer", confidence=ans.confidence, raw_confidence=raw,
                          calibration=cal.method if cal is not None else None,
                          abstained=ans.abstained, budget_exhausted=ans.budget_exhausted,
                          conflicts=ans.conflicts, domain=domain)
        if cal is None and str(ctx.calibration or "").lower() != "none":
            ans.notes.append(f"uncalibrated for {domain} images: the confidence is the raw score")
        if samples is not None:
            step["samples"] = samples.answers
            step["agreement"] = samples.agreement
            step["elapsed_s"] = round(samples.elapsed_s, 4)
            if samples.errors:
                step["sample_errors"] = samples.errors
        return {"answer": ans, "messages": [AIMessage(content=ans.text)], "trace": [step]}

    return answer
