"""examples/embed_graph.py and langgraph.json: the graph embedded in another app or served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent import AgentContext
from tests.webapp.helpers import planner, png
from tools.ingest.loader import load_image
from tools.vision.basic import basic_tools

ROOT = Path(__file__).resolve().parents[2]


def test_embedding_example_runs_and_streams_events(tmp_path, server):
    """examples/embed_graph.py as a user runs it, against a scripted OpenAI-compatible server."""
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    image_id = load_image(ct).content_id()
    server.reply_calls(("describe_image", {"image_id": image_id}))
    server.reply_calls(("final_answer", {"answer": "A small CT slice.", "confidence": 0.7,
                                         "claims": [{"statement": "CT", "evidence_ids": ["E2"]}]}))
    env = {**os.environ, "MEDLOOP_HOME": str(tmp_path), "NO_PROXY": "127.0.0.1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed_graph.py"), ct, "What is this?",
         "--llm", f"openai:test@{server.url}"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps[:3] == ["ingest", "think", "act"] and "rethink" in steps
    # case_answer is asked first (E1), then the planner's describe_image (E2)
    acts = [e for e in events if e.get("step") == "act"]
    assert [(a["tool"], a["status"]) for a in acts] == [("case_answer", "ok"),
                                                        ("describe_image", "ok")]
    assert events[-1]["type"] == "answer" and events[-1]["text"] == "A small CT slice."
    assert [e["id"] for e in events[-1]["evidence"]] == ["E1", "E2"]


def test_embedding_example_async_stream(tmp_path, store):
    import asyncio
    import importlib.util

    from agent import build_graph

    spec = importlib.util.spec_from_file_location("embed_graph_example",
                                                  ROOT / "examples" / "embed_graph.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ctx = AgentContext(llm=planner(), tools=basic_tools(store), home=tmp_path, checkpoint="memory")
    ctx._store = store
    graph = build_graph(ctx)
    image = str(png(tmp_path / "sq.png"))

    async def collect():
        return [e async for e in example.astream_events(graph, [image], "How big?", "t1")]

    events = asyncio.run(collect())
    assert [e["tool"] for e in events if e.get("step") == "act"] == ["region_stats",
                                                                      "measure_distance"]
    assert events[-1]["text"] == "A bright square, 32 px wide."


def test_langgraph_server_config_validates_with_the_langgraph_cli():
    from langgraph_cli.config import validate_config_file

    config = validate_config_file(ROOT / "langgraph.json")
    assert config["graphs"] == {"medloop": "./agent/served.py:graph"}
    assert config["dependencies"] == ["."]
