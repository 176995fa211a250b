"""Framework overhead per agent step, against a bare two-node LangGraph loop in the same run.

The agent runs a scripted fake model and a no-op tool, so what is timed is medloop's own work
per step (state reducers, evidence, prompt building, schema offering, checks) plus LangGraph's,
with and without the SQLite checkpointer. Checkpoint sizes are read back from the SQLite file.

Goals (issue 2): ≤ 2 ms per step with SQLite; checkpoints ≤ 64 KB per step.
Run: ``.venv/bin/python bench/agent_overhead.py [--rounds 20] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel
from typing_extensions import TypedDict

from agent import AgentContext, build_graph
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.base import make_tool
from tools.evidence import Evidence
from tools.store import ImageStore


class _Loop(TypedDict):
    n: int


def bare_loop_per_step(steps: int, repeats: int) -> float:
    """Seconds per step of a minimal two-node LangGraph loop (no checkpointer)."""

    def a(s: _Loop) -> dict[str, int]:
        return {"n": s["n"] + 1}

    def b(s: _Loop) -> dict[str, int]:
        return {"n": s["n"] + 1}

    g = StateGraph(_Loop)
    g.add_node("a", a)
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: END if s["n"] >= steps else "b")
    g.add_edge("b", "a")
    compiled = g.compile().with_config(recursion_limit=steps + 10)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled.invoke({"n": 0})
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


class _NoArgs(BaseModel):
    image_id: str
    k: int


def agent_per_step(
    rounds: int, repeats: int, checkpoint: str | None, home: Path
) -> tuple[float, int, list[int]]:
    """Seconds per graph step of the agent; steps per run; checkpoint blob sizes (SQLite)."""
    store = ImageStore(home / "store")
    img = store.put(phantom(h=512, w=512)).id

    def noop(a: _NoArgs) -> Evidence:
        return Evidence(tool="noop", image_id=a.image_id, summary=f"nothing {a.k}", score=0.9)

    tool = make_tool(noop, name="noop", description="does nothing", args_schema=_NoArgs)
    counter = itertools.count()

    def script() -> Any:
        while True:
            for r in range(rounds):
                yield ai(call("noop", image_id=img, k=next(counter) * 1000 + r))
            yield final("done", [("nothing", ["E1"])])

    model = ScriptedChatModel.of(script())
    ctx = AgentContext(
        llm=model, tools=[tool], home=home, checkpoint=checkpoint, max_rounds=rounds + 2
    )
    ctx._store = store
    graph = build_graph(ctx)
    steps = 1 + 2 * rounds + 1 + 1 + 1  # ingest, think/act per round, think, rethink, answer
    times = []
    for i in range(repeats):
        cfg = {"configurable": {"thread_id": f"bench-{checkpoint}-{i}"}}
        t0 = time.perf_counter()
        out = graph.invoke({"messages": [("user", "q")], "images": [img]}, cfg)
        times.append((time.perf_counter() - t0) / steps)
        assert out["answer"] is not None and len(out["evidence"]) == rounds
    sizes: list[int] = []
    if checkpoint == "sqlite":
        con = sqlite3.connect(home / "checkpoints.sqlite")
        sizes = [
            len(r[0]) + len(r[1] or b"")
            for r in con.execute("select checkpoint, metadata from checkpoints")
        ]
    return statistics.median(times), steps, sizes


def main() -> None:
    """Print the overhead table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        steps = 2 * args.rounds + 4
        bare = bare_loop_per_step(steps, args.repeats)
        mem, _, _ = agent_per_step(args.rounds, args.repeats, None, home / "none")
        sql, steps, sizes = agent_per_step(args.rounds, args.repeats, "sqlite", home / "sqlite")
    ms = 1000.0
    print(
        f"agent overhead: {args.rounds} tool rounds ({steps} steps) per run, median of {args.repeats} runs"
    )
    print(f"{'configuration':44s} {'ms/step':>9s} {'x bare':>8s} {'goal':>10s}")
    print(f"{'bare 2-node LangGraph loop (baseline)':44s} {bare * ms:9.3f} {1.0:8.2f} {'':>10s}")
    print(
        f"{'medloop graph, fake LLM, no checkpointer':44s} {mem * ms:9.3f} {mem / bare:8.2f} {'':>10s}"
    )
    print(
        f"{'medloop graph, fake LLM, SQLite':44s} {sql * ms:9.3f} {sql / bare:8.2f} "
        f"{'<= 2 ms ' + ('ok' if sql * ms <= 2 else 'MISSED'):>10s}"
    )
    if sizes:
        print(
            f"checkpoint size per step: median {statistics.median(sizes) / 1024:.1f} KB, "
            f"max {max(sizes) / 1024:.1f} KB (goal <= 64 KB: {'ok' if max(sizes) <= 65536 else 'MISSED'}); "
            f"a 512x512 float32 image would be 1024 KB"
        )


if __name__ == "__main__":
    main()
