"""*act*: run the planner's tool calls in parallel, each under a time limit.

LangGraph's ``ToolNode`` runs calls in parallel but has no per-call time limit and returns text,
not our ``Evidence``; this node adds both. Every call ends as exactly one ``ToolMessage`` (so
the transcript stays valid for any chat API) and one ``Evidence`` item, numbered ``E<n>`` in call
order. Failures are recorded with ``status="error"`` and told to the model in words it can act
on — bad arguments (retry), unknown tool (here are the names), time-out, tool failure — and
never dressed up as results. A call identical to one that already succeeded this conversation
is not run again; the model is pointed at the earlier evidence instead.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import ValidationError

from agent.context import AgentContext
from agent.state import AgentState
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Evidence


@dataclass
class _Job:
    call: dict[str, Any]
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
    if isinstance(exc, ToolInputError):
        return f"bad arguments for {tool}: {exc}. Fix them and call again."
    if isinstance(exc, ToolFailure):
        return f"{tool} failed: {exc}. Try another tool or answer without it."
    return f"{tool} crashed ({type(exc).__name__}: {exc}). Try another tool."


def _key(call: dict[str, Any]) -> str:
    return call["name"] + json.dumps(call.get("args") or {}, sort_keys=True, default=str)


def make_act(default: AgentContext, tools: list[BaseTool]):  # type: ignore[no-untyped-def]
    """Build the act node for a fixed tool list."""
    by_name = {t.name: t for t in tools}

    def act(state: AgentState, runtime: Runtime[AgentContext]) -> Command[Literal["think"]]:
        ctx = runtime.context or default
        last = state["messages"][-1]
        calls = list(last.tool_calls) if isinstance(last, AIMessage) else []
        evidence = state.get("evidence") or []
        done_before = {_key({"name": e.tool, "args": e.args}): e for e in evidence if e.status == "ok"}
        next_n = len(evidence) + 1
        turn, rnd = int(state.get("turn") or 0), int(state.get("round") or 0)

        jobs: list[_Job | Evidence] = []
        for call in calls:
            tool = by_name.get(call["name"])
            if tool is None:
                names = ", ".join(sorted(by_name)) or "(none)"
                jobs.append(Evidence(tool=call["name"], status="error", args=call.get("args") or {},
                                     summary=f"unknown tool {call['name']!r}; available: {names}"))
            elif _key(call) in done_before:
                prev = done_before[_key(call)]
                jobs.append(Evidence(tool=call["name"], status="error", args=call.get("args") or {},
                                     summary=f"already done: see {prev.id}. Use it, or call a different tool."))
            else:
                jobs.append(_Job(call=call, tool=tool))

        # Run at most max_parallel_tools at a time, each with its own deadline.
        pending = [j for j in jobs if isinstance(j, _Job)]
        for i in range(0, len(pending), ctx.max_parallel_tools):
            batch = pending[i : i + ctx.max_parallel_tools]
            for job in batch:
                _start(job)
            for job in batch:
                job.done.wait(max(0.0, job.started + ctx.tool_timeout_s - time.perf_counter()))

        messages: list[ToolMessage] = []
        new_evidence: list[Evidence] = []
        trace: list[dict[str, Any]] = []
        for call, job in zip(calls, jobs, strict=True):
            if isinstance(job, Evidence):
                ev = job
            elif not job.done.is_set():
                ev = Evidence(tool=job.tool.name, status="error", args=call.get("args") or {},
                              elapsed_s=ctx.tool_timeout_s,
                              summary=f"{job.tool.name} timed out after {ctx.tool_timeout_s:g} s. "
                                      "Try a cheaper call or answer without it.")
            elif job.error is not None:
                ev = Evidence(tool=job.tool.name, status="error", args=call.get("args") or {},
                              elapsed_s=job.elapsed, summary=describe_error(job.error, job.tool.name))
            elif isinstance(job.value, Evidence):
                ev = job.value.model_copy(update={"args": call.get("args") or {},
                                                  "elapsed_s": round(job.elapsed, 4)})
            else:
                ev = Evidence(tool=job.tool.name, status="error", args=call.get("args") or {},
                              summary=f"{job.tool.name} returned no evidence (internal error)")
            ev = ev.model_copy(update={"id": f"E{next_n}"})
            next_n += 1
            new_evidence.append(ev)
            messages.append(ToolMessage(content=ev.for_prompt(), tool_call_id=call["id"],
                                        name=call["name"],
                                        status="success" if ev.status == "ok" else "error"))
            trace.append({"turn": turn, "round": rnd, "step": "act", "tool": call["name"],
                          "args": call.get("args") or {}, "status": ev.status,
                          "evidence_id": ev.id, "elapsed_s": ev.elapsed_s, "summary": ev.summary})
        return Command(goto="think", update={"messages": messages, "evidence": new_evidence,
                                             "feedback": [], "trace": trace})

    return act
