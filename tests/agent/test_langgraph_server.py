"""The graph behind the real LangGraph server: ``langgraph dev`` and the ``langgraph-sdk`` client.

``langgraph dev`` (langgraph-cli[inmem]) serves the repository's ``langgraph.json`` from a
subprocess; its planner is a scripted OpenAI-compatible server named by ``MEDLOOP_LLM`` in the
server's environment, so the run is offline and its answer known. A client creates a thread,
streams a run with an image and reads the answer; the embedding example does the same through
its ``--server`` option.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.agent.mcp.procs import ROOT, free_port, offline_env, start, stop, wait_ready
from tools.ingest.loader import load_image

LANGGRAPH = shutil.which("langgraph", path=str(Path(sys.executable).parent))
CT = get_testdata_file("CT_small.dcm")


def _cannot_start() -> str | None:
    if LANGGRAPH is None:
        return "the langgraph CLI is not installed (pip install 'langgraph-cli[inmem]')"
    if importlib.util.find_spec("langgraph_api") is None:
        return "langgraph dev needs langgraph-cli's [inmem] extra (langgraph-api)"
    return None


pytestmark = pytest.mark.skipif(_cannot_start() is not None, reason=str(_cannot_start()))


def script(server, answer: str) -> None:
    """Describe, then answer from the description (E2: case_answer's, asked first, is E1)."""
    server.reply_calls(("describe_image", {"image_id": load_image(CT).content_id()}))
    server.reply_calls(("final_answer", {
        "answer": answer, "confidence": 0.8,
        "claims": [{"statement": "a CT slice", "evidence_ids": ["E2"]}]}))


def test_langgraph_dev_serves_the_graph_to_the_sdk_client(server, tmp_path):
    from langgraph_sdk import get_sync_client

    port, log = free_port(), tmp_path / "langgraph.log"
    # langgraph dev keeps its state in ./.langgraph_api and reads the graph's path relative to
    # where it runs: it runs in a temp folder holding the repository's langgraph.json and a
    # link to its agent package, so the repository stays clean.
    work = tmp_path / "app"
    work.mkdir()
    shutil.copy(ROOT / "langgraph.json", work / "langgraph.json")
    (work / "agent").symlink_to(ROOT / "agent", target_is_directory=True)
    proc = start([str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--port", str(port),
                  "--config", "langgraph.json"], log,
                 offline_env(MEDLOOP_HOME=str(tmp_path / "home"),
                             MEDLOOP_LLM=f"openai:test@{server.url}",
                             LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false"),
                 cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/ok", log, 180, accept_http_error=False)
        client = get_sync_client(url=url, timeout=300)
        assert [a["graph_id"] for a in client.assistants.search()] == ["medloop"]

        script(server, "A small CT slice.")
        thread = client.threads.create()["thread_id"]
        inputs = {"messages": [{"role": "user", "content": "What is this?"}], "images": [CT]}
        nodes = []
        for part in client.runs.stream(thread, "medloop", input=inputs, stream_mode="updates"):
            assert part.event != "error", part.data
            if part.event == "updates":
                nodes += list(part.data)
        # case_answer asked first (think, act), then the planner's two calls
        assert nodes == ["ingest", "think", "act", "think", "act", "think", "rethink", "answer"]
        values = client.threads.get_state(thread)["values"]
        assert values["answer"]["text"] == "A small CT slice."
        assert [e["tool"] for e in values["evidence"]] == ["case_answer", "describe_image"]
        assert values["image_refs"][0]["id"] == load_image(CT).content_id()
        # the planner was the one MEDLOOP_LLM names (the server's environment), not a default
        assert len(server.requests) == 2
        assert "describe_image" in json.dumps(server.requests[0]["body"]["tools"])

        # the embedding example's SDK client, beside its in-process one
        script(server, "Still a small CT slice.")
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "embed_graph.py"), CT, "And this?",
             "--server", url], capture_output=True, text=True, timeout=300,
            env=offline_env(), check=True)
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert [e["node"] for e in events if e["type"] == "step"][:3] == ["ingest", "think",
                                                                           "act"]
        assert events[-1]["type"] == "answer" and events[-1]["text"] == "Still a small CT slice."
        assert events[-1]["evidence"][1]["tool"] == "describe_image" and events[-1]["thread"]
    finally:
        stop(proc, 30)
    assert proc.returncode is not None and (work / ".langgraph_api").is_dir()
