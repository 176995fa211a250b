"""*act*: run the planner's tool calls in parallel, each under a time limit.

LangGraph's ``ToolNode`` runs calls in parallel but has no per-call time limit and returns text,
not our ``Evidence``; this node adds both. Every call ends as exactly one ``ToolMessage`` (so
the transcript stays valid for any chat API) and one ``Evidence`` item, numbered ``E<n>`` in call
order. Failures are recorded with ``status="error"`` and told to the model in words it can act
on — bad arguments (retry), unknown tool (here are the names), time-out, tool failure — and
never dressed up as results. A call identical to one that already succeeded this conversation
is not run again; the model is pointed at the earlier evidence instead, and neither is a tool on an
image its domain refused (``OutsideDomain``). A tool that takes the
user's question (``question``, e.g. ``case_answer``) is given it as asked (``as_asked``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import ValidationError

from agent.context import AgentContext
from agent.state import AgentState, current_question
from agent.trace import ActStep
from tools.domain import flag_evidence
from tools.errors import (
    MedloopError,
    OutsideDomain,
    ResourceNotReady,
    ToolFailure,
    ToolInputError,
)
from tools.evidence import Evidence
from tools.store import ImageStore

log = logging.getLogger("medloop.tools")


@dataclass
class _Job:
    call: ToolCall
    tool: BaseTool
    done: threading.Event = field(default_factory=threading.Event)
    value: Evidence | None = None
    error: BaseException | None = None
    started: float = 0.0
    elapsed: float = 0.0


def _start(job: _Job) -> None:
    """Run one call on a daemon thread: a hung tool cannot keep the process alive at exit."""
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            job.value = ctx.run(job.tool.invoke, job.call["args"])
        except BaseException as exc:  # reported to the model below, never swallowed
            job.error = exc
        finally:
            job.elapsed = time.perf_counter() - job.started
            job.done.set()

    job.started = time.perf_counter()
    threading.Thread(target=target, name=f"tool-{job.call['name']}", daemon=True).start()


def describe_error(exc: BaseException, tool: str) -> str:
    """The message the model reads for a failed call."""
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return f"bad arguments for {tool}: {fields}. Fix them and call again."
    if isinstance(exc, OutsideDomain):  # no other arguments mend the image
        return f"{tool} cannot take this image: {exc}."
    if isinstance(exc, ToolInputError):
        return f"bad arguments for {tool}: {exc}. Fix them and call again."
    if isinstance(exc, ResourceNotReady):
        return f"{tool} is not ready yet: {exc}"
    if isinstance(exc, ToolFailure):
        return f"{tool} failed: {exc}. Try another tool or answer without it."
    return f"{tool} crashed ({type(exc).__name__}: {exc}). Try another tool."


def is_unexpected(exc: BaseException) -> bool:
    """A bug rather than an outcome: not one of medloop's named errors or a schema rejection."""
    return not isinstance(exc, MedloopError | ValidationError)


def _key(call: ToolCall | dict[str, Any]) -> str:
    return call["name"] + json.dumps(call.get("args") or {}, sort_keys=True, default=str)


def _failed(call: ToolCall, summary: str, elapsed: float = 0.0,
            data: dict[str, Any] | None = None) -> Evidence:
    return Evidence(
        tool=call["name"],
        status="error",
        args=call.get("args") or {},
        summary=summary,
        data=data or {},
        elapsed_s=round(elapsed, 4),
    )


def refused_for_domain(ev: Evidence) -> str:
    """Why a failed call's tool refused its image as outside its domain; empty otherwise."""
    return str(ev.data.get("refused") or "") if ev.status == "error" else ""


def _refusal_key(tool: str, args: dict[str, Any] | None) -> str:
    return f"{tool}:{(args or {}).get('image_id', '')}"


def _takes_question(tool: BaseTool) -> bool:
    schema = tool.args_schema
    if isinstance(schema, dict):
        return "question" in (schema.get("properties") or {})
    return "question" in (getattr(schema, "model_fields", None) or {})


def as_asked(call: ToolCall, tool: BaseTool | None, question: str) -> ToolCall:
    """The call with the user's question, as asked, as its ``question`` argument.

    Only for a tool whose schema takes one ("the user's question about the image, as asked").
    Such a tool is only as good as the question it is given, and two checks key on the question
    as asked: the answer bound to the yes/no the evidence gave it, and the check that an answer
    does not contradict its evidence. The small planner reworded questions in its calls
    ("Is/Are the mass cystic? -yes/no" lost its tail), which escaped both: on 115 real closed
    answers, 10 said the opposite of the expert they cited.
    """
    if tool is None or not question.strip() or not _takes_question(tool):
        return call
    args = dict(call.get("args") or {})
    if args.get("question") == question:
        return call
    return {**call, "args": {**args, "question": question}}


def plan_jobs(
    calls: list[ToolCall], by_name: dict[str, BaseTool], evidence: list[Evidence]
) -> list[_Job | Evidence]:
    """A job per call to run, or the error evidence for a call that must not run."""
    done_before = {_key({"name": e.tool, "args": e.args}): e for e in evidence if e.status == "ok"}
    refused = {_refusal_key(e.tool, e.args): e for e in evidence if refused_for_domain(e)}
    jobs: list[_Job | Evidence] = []
    for call in calls:
        tool = by_name.get(call["name"])
        if tool is None:
            names = ", ".join(sorted(by_name)) or "(none)"
            jobs.append(_failed(call, f"unknown tool {call['name']!r}; available: {names}"))
        elif _refusal_key(call["name"], call.get("args")) in refused:
            first = refused[_refusal_key(call["name"], call.get("args"))]
            jobs.append(_failed(call, f"already refused: see {first.id}; {call['name']} cannot "
                                      "take this image. Call a different tool or answer.",
                                data={"refused": refused_for_domain(first)}))
        elif _key(call) in done_before:
            prev = done_before[_key(call)].id
            jobs.append(
                _failed(call, f"already done: see {prev}. Use it, or call a different tool.")
            )
        else:
            jobs.append(_Job(call=call, tool=tool))
    return jobs


def run_jobs(jobs: list[_Job], max_parallel: int, timeout_s: float) -> None:
    """Run at most ``max_parallel`` at a time; each waits no longer than its own deadline."""
    for i in range(0, len(jobs), max_parallel):
        batch = jobs[i : i + max_parallel]
        for job in batch:
            _start(job)
        for job in batch:
            job.done.wait(max(0.0, job.started + timeout_s - time.perf_counter()))


def job_evidence(job: _Job, timeout_s: float) -> Evidence:
    """What a finished (or abandoned) job observed, as evidence."""
    name = job.tool.name
    if not job.done.is_set():
        return _failed(
            job.call,
            f"{name} timed out after {timeout_s:g} s. Try a cheaper call or answer without it.",
            timeout_s,
        )
    if job.error is not None:
        if is_unexpected(job.error):  # a bug: its traceback goes to the log, not to the model
            log.error("tool %s crashed on %s", name, job.call.get("args"), exc_info=job.error)
        return _failed(job.call, describe_error(job.error, name), job.elapsed,
                       {"refused": job.error.reason} if isinstance(job.error, OutsideDomain)
                       else None)
    if not isinstance(job.value, Evidence):
        return _failed(job.call, f"{name} returned no evidence (internal error)", job.elapsed)
    return job.value.model_copy(
        update={"args": job.call.get("args") or {}, "elapsed_s": round(job.elapsed, 4)}
    )


def _strings(value: Any) -> list[str]:
    """The strings in a tool call's arguments (mask keys may come alone or in lists)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def inherit_flags(ev: Evidence, evidence: list[Evidence]) -> Evidence:
    """``ev`` flagged when it was computed from a mask that flagged evidence made.

    A measurement of a mask is no better than the mask: on real items the 0.5B planner, after
    ``measure_lungs`` (flagged on a JPEG whose view is unknown), called ``measure`` on its lung
    mask and answered "There is tracheal deviation." citing that clean-looking area.
    """
    if ev.status != "ok":
        return ev
    used = set(_strings(ev.args))
    sources = [e for e in evidence if e.status == "ok" and e.data.get("out_of_domain")
               and used.intersection(e.mask_keys)]
    for src in sources:
        ev = flag_evidence(ev, f"it measures a mask from {src.id} ({src.tool}), which is outside "
                               "what that tool was validated for",
                           "masks from a tool inside its validated domain")
    return ev


def make_act(default: AgentContext, tools: list[BaseTool],
             store: ImageStore | None = None) -> Callable[..., Any]:
    """Build the act node for a fixed tool list.

    ``store`` (the graph's) resolves the images a tool stored (``Evidence.new_image_ids``), which
    join the conversation's images so the planner may name them in its next calls.
    """
    by_name = {t.name: t for t in tools}

    def act(state: AgentState, runtime: Runtime[AgentContext]) -> Command[Literal["think"]]:
        ctx = runtime.context or default
        last = state["messages"][-1]
        question = current_question(state)
        calls = [as_asked(c, by_name.get(c["name"]), question)
                 for c in (last.tool_calls if isinstance(last, AIMessage) else [])]
        evidence = state.get("evidence") or []
        turn, rnd = int(state.get("turn") or 0), int(state.get("round") or 0)

        jobs = plan_jobs(calls, by_name, evidence)
        run_jobs(
            [j for j in jobs if isinstance(j, _Job)], ctx.max_parallel_tools, ctx.tool_timeout_s
        )

        if ctx.raise_tool_errors:  # tests: a bug in a tool fails the test, not the answer
            for j in jobs:
                if isinstance(j, _Job) and j.error is not None and is_unexpected(j.error):
                    raise j.error
        messages: list[ToolMessage] = []
        new_evidence: list[Evidence] = []
        trace: list[ActStep] = []
        for n, (call, job) in enumerate(zip(calls, jobs, strict=True), start=len(evidence) + 1):
            ev = job if isinstance(job, Evidence) else job_evidence(job, ctx.tool_timeout_s)
            ev = inherit_flags(ev.model_copy(update={"id": f"E{n}"}), evidence)
            new_evidence.append(ev)
            messages.append(
                ToolMessage(
                    content=ev.for_prompt(),
                    tool_call_id=call["id"],
                    name=call["name"],
                    status="success" if ev.status == "ok" else "error",
                )
            )
            trace.append(
                ActStep(
                    turn=turn,
                    round=rnd,
                    step="act",
                    tool=call["name"],
                    args=call.get("args") or {},
                    status=ev.status,
                    evidence_id=ev.id,
                    elapsed_s=ev.elapsed_s,
                    summary=ev.summary,
                )
            )
        new_refs = [store.ref(i) for ev in new_evidence if ev.status == "ok"
                    for i in ev.new_image_ids if store is not None and i in store]
        update: dict[str, Any] = {"messages": messages, "evidence": new_evidence,
                                  "feedback": [], "trace": trace}
        if new_refs:
            update["image_refs"] = new_refs
        return Command(goto="think", update=update)

    return act
