"""``agent.mcp.client``: a site's MCP server's tools, called by the planner through the graph.

The server is ``site_server.py``, a FastMCP script started for real (stdio, and streamable HTTP);
the planner is a scripted chat model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent import AgentContext, build_graph
from agent.mcp import McpError, close_all, remote_tools
from tests.agent.mcp.procs import free_port, offline_env, start, stop, wait_ready
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.errors import ToolFailure, ToolInputError

SITE = str(Path(__file__).with_name("site_server.py"))


def site(**extra) -> dict:
    return {"mcpServers": {"site": {"command": sys.executable, "args": [SITE], **extra}}}


@pytest.fixture(autouse=True, scope="module")
def _close_sessions():
    yield
    close_all()  # the stdio servers end with their sessions


def test_the_planner_calls_a_site_tool_through_the_graph(store, medloop_home):
    img = store.put(phantom()).id
    expected = store.get(img).display.mean()
    model = ScriptedChatModel.of([
        ai(call("mean_intensity", image_id=img), call("always_fails", reason="maintenance")),
        lambda msgs: final("The mean grey level was measured.", [("mean grey level", ["E1"])]),
    ])
    ctx = AgentContext(llm=model, mcp_servers=site(), home=medloop_home, checkpoint="memory",
                       raise_tool_errors=True)
    graph = build_graph(ctx, store=store)  # tools=None: the default set, the site's appended
    result = graph.invoke({"messages": [("user", "How bright is it?")], "images": [img]},
                          {"configurable": {"thread_id": "t1"}})

    e1, e2 = result["evidence"]
    assert (e1.id, e1.tool, e1.status, e1.image_id) == ("E1", "mean_intensity", "ok", img)
    # the site computed the mean of the image medloop sent it: the stored display, as PNG
    assert e1.summary.startswith(f"mean grey level {expected:.2f}")
    assert e1.score == 0.9 and e1.data["width"] == 80 and e1.data["height"] == 64
    assert (e2.tool, e2.status) == ("always_fails", "error")
    assert "backend down: maintenance" in e2.summary
    assert result["answer"].findings[0].evidence_ids == ["E1"]
    # offered beside medloop's own tools, the image as an id the planner can only pick
    offered = {t["function"]["name"]: t["function"] for t in model.offered[0]}
    assert "segment" in offered and "site_protocol" in offered
    params = offered["mean_intensity"]["parameters"]
    assert "image" not in params["properties"] and params["properties"]["image_id"]["enum"] == [img]
    assert params["properties"]["threshold"]["type"] == "integer" and "$defs" not in params
    assert offered["mean_intensity"]["description"].endswith("[MCP server site]")
    # the planner's second prompt held the site's result
    assert "E1 (mean_intensity): mean grey level" in str(model.seen[1])


def test_arguments_are_checked_before_the_call_and_errors_are_named(store):
    tools = {t.name: t for t in remote_tools(site(), store, call_timeout_s=30)}
    with pytest.raises(ToolInputError, match="threshold: 'high' is not of type 'integer'"):
        tools["mean_intensity"].invoke({"image_id": "img-000000000000", "threshold": "high"})
    with pytest.raises(ToolInputError, match="unknown image id"):
        tools["mean_intensity"].invoke({"image_id": "img-000000000000"})
    with pytest.raises(ToolInputError, match="'topic' is a required property"):
        tools["site_protocol"].invoke({})
    with pytest.raises(ToolFailure, match=r"site reported an error: .*backend down: now"):
        tools["always_fails"].invoke({"reason": "now"})
    ev = tools["site_protocol"].invoke({"topic": "chest radiograph"})
    assert ev.summary == ("Site protocol for chest radiograph: report heart size and both "
                          "costophrenic angles.")
    assert ev.data == {} and ev.image_id is None  # FastMCP's {"result": text} is not repeated


def test_a_server_that_dies_mid_call_is_reported_then_restarted(store):
    tools = {t.name: t for t in remote_tools(site(env={"RUN": "crash-test"}), store)}
    with pytest.raises(ToolFailure, match=r"MCP server 'site' .* failed during the call"):
        tools["crash"].invoke({})
    ev = tools["site_protocol"].invoke({"topic": "CT"})  # a new process, a new session
    assert ev.summary.startswith("Site protocol for CT")


def test_a_server_that_is_down_or_hangs_is_named_within_its_time_limit(store):
    exits = {"mcpServers": {"broken": {"command": sys.executable,
                                       "args": ["-c", "import sys; sys.exit(3)"]}}}
    with pytest.raises(McpError, match=r"MCP server 'broken' \(.*\) could not be reached"):
        remote_tools(exits, store)
    port = free_port()  # nothing listens there
    gone = {"mcpServers": {"gone": {"url": f"http://127.0.0.1:{port}/mcp", "timeout": 5}}}
    t0 = time.monotonic()
    with pytest.raises(McpError, match=f"MCP server 'gone' \\(http://127.0.0.1:{port}/mcp\\)"):
        remote_tools(gone, store)
    hangs = {"mcpServers": {"slow": {"command": sys.executable,
                                     "args": ["-c", "import time; time.sleep(60)"], "timeout": 1}}}
    with pytest.raises(McpError, match=r"'slow' .* did not start and list its tools within 1 s"):
        remote_tools(hangs, store)
    assert time.monotonic() - t0 < 30


def test_a_tool_name_taken_twice_needs_a_prefix(store):
    with pytest.raises(McpError, match="'site_protocol', a name medloop already uses"):
        remote_tools(site(), store, taken=["site_protocol"])
    two = {"mcpServers": {"a": site()["mcpServers"]["site"], "b": site()["mcpServers"]["site"]}}
    with pytest.raises(McpError, match="a name MCP server 'a' already uses: set \"prefix\""):
        remote_tools(two, store)
    two["mcpServers"]["b"] = {**two["mcpServers"]["b"], "prefix": "b_"}
    names = [t.name for t in remote_tools(two, store)]
    assert "site_protocol" in names and "b_site_protocol" in names


def test_a_site_server_over_streamable_http(store, tmp_path):
    port = free_port()
    log = tmp_path / "site.log"
    proc = start([sys.executable, SITE, "http", str(port)], log, offline_env())
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/mcp", log, 60)
        img = store.put(phantom(value=200.0)).id
        settings = {"mcpServers": {"site": {"url": f"http://127.0.0.1:{port}/mcp"}}}
        tools = {t.name: t for t in remote_tools(settings, store)}
        ev = tools["mean_intensity"].invoke({"image_id": img, "threshold": 100})
        assert ev.summary.startswith(f"mean grey level {store.get(img).display.mean():.2f}")
        assert "of pixels above 100" in ev.summary
    finally:
        close_all()
        stop(proc)
