"""Checkpoints: crash recovery, small checkpoints, the graph's drawing, the default graph."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import AgentContext, build_graph

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import itertools, os, sys
    from pathlib import Path
    from agent import AgentContext, build_graph
    from tests.conftest import phantom
    from tests.fakes import ScriptedChatModel, ai, call, final
    from tests.loop_tools import loop_tools
    from tools.base import ImageArgs, make_tool
    from tools.evidence import Evidence
    from tools.store import ImageStore

    home, marker, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    store = ImageStore(home / "store")
    img = store.put(phantom()).id

    def crashes_once(a):
        if not marker.exists():
            marker.write_text("crashed")
            os._exit(3)          # the process dies mid-tool, like a killed server
        return Evidence(tool="crashes_once", image_id=a.image_id, summary="survived", score=0.9)

    tools, _ = loop_tools(store)
    tools.append(make_tool(crashes_once, name="crashes_once", description="x", args_schema=ImageArgs))

    def policy(msgs):
        if "E2 (" in msgs[0].content:
            return final("both done", [("survived", ["E2"])])
        return ai(call("mean_intensity", image_id=img), call("crashes_once", image_id=img))

    model = ScriptedChatModel.of(policy for _ in itertools.count())
    ctx = AgentContext(llm=model, tools=tools, home=home, checkpoint="sqlite")
    graph = build_graph(ctx)
    cfg = {"configurable": {"thread_id": "crash"}}
    if mode == "start":
        graph.invoke({"messages": [("user", "the question before the crash")], "images": [img]}, cfg)
    else:
        out = graph.invoke(None, cfg)   # resume from the last checkpoint
        print("ANSWER", out["answer"].text)
        print("Q", [m.content for m in out["messages"] if m.type == "human"])
        print("EV", [(e.id, e.tool, e.status) for e in out["evidence"]])
""")


def test_resume_after_crash_from_sqlite(tmp_path):
    home, marker = tmp_path / "home", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(home), str(marker), "start"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 3, first.stderr
    assert marker.exists()
    second = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(home), str(marker), "resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert "ANSWER both done" in out
    assert "the question before the crash" in out
    assert "('E1', 'mean_intensity', 'ok'), ('E2', 'crashes_once', 'ok')" in out


def test_checkpoints_hold_no_pixels(tmp_path, store):
    import numpy as np

    from tests.conftest import phantom
    from tests.fakes import ScriptedChatModel, ai, call, final
    from tests.loop_tools import loop_tools

    big = phantom(h=512, w=512)
    big.pixels = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)  # 1 MiB
    img = store.put(big).id
    tools, _ = loop_tools(store)
    model = ScriptedChatModel.of(
        [ai(call("mean_intensity", image_id=img)), final("ok", [("mean measured", ["E1"])])]
    )
    ctx = AgentContext(llm=model, tools=tools, home=tmp_path, checkpoint="sqlite")
    ctx._store = store
    build_graph(ctx).invoke(
        {"messages": [("user", "q")], "images": [img]}, {"configurable": {"thread_id": "size"}}
    )
    con = sqlite3.connect(tmp_path / "checkpoints.sqlite")
    sizes = [len(r[0]) for r in con.execute("select checkpoint from checkpoints")]
    writes = [len(r[0]) for r in con.execute("select value from writes")]
    assert sizes and max(sizes) < 64 * 1024 and max(writes) < 64 * 1024


def test_mermaid_drawing_matches_golden(tmp_path):
    graph = build_graph(AgentContext(llm="embedded", tools=[], home=tmp_path, checkpoint=None))
    drawing = graph.get_graph().draw_mermaid()
    golden = Path(__file__).parent / "golden" / "graph.mmd"
    if os.environ.get("MEDLOOP_UPDATE_GOLDEN"):
        golden.write_text(drawing)
    assert drawing == golden.read_text()
    for edge in (
        "ingest --> think",
        "think -.-> act",
        "think -.-> rethink",
        "act -.-> think",
        "rethink -.-> answer",
        "think -.-> answer",
    ):
        assert edge in drawing


def test_default_graph_and_recursion_limit(tmp_path):
    import agent

    g = agent.graph
    assert g is agent.graph  # built once
    assert g.checkpointer is None
    ctx = AgentContext(max_rounds=4, tools=[], home=tmp_path, checkpoint=None)
    assert build_graph(ctx).config["recursion_limit"] == ctx.recursion_limit == 22


def test_bad_checkpoint_spec(tmp_path):
    with pytest.raises(ValueError, match="bad checkpoint"):
        build_graph(AgentContext(tools=[], home=tmp_path, checkpoint="redis://x"))


def test_langgraph_json_names_the_default_graph():
    import importlib.util
    import json

    spec = json.loads((ROOT / "langgraph.json").read_text())
    path, _, attr = spec["graphs"]["medloop"].partition(":")
    module_spec = importlib.util.spec_from_file_location("medloop_graph_entry", ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    graph = getattr(module, attr)
    assert set(graph.get_graph().nodes) >= {"ingest", "think", "act", "rethink", "answer"}
    assert graph.checkpointer is None  # the server brings its own persistence
