"""``medloop mcp``: an ``mcp`` SDK client lists the tools and calls ``segment`` and ``ask``.

Over stdio and over streamable HTTP, each against a real ``medloop mcp`` process whose planner
is a scripted OpenAI-compatible server (``tests.openai_server``); the segmenter is the packaged
LiteMedSAM. Then, in process: the ``image`` argument's rules, time limits, and a study fetched
from a real Orthanc PACS.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from pydicom.data import get_testdata_file

from agent import AgentContext
from agent.mcp_server.images import ImageResolver
from agent.mcp_server.server import McpService
from tests.agent.mcp.procs import free_port, offline_env, start, stop, wait_ready
from tests.conftest import phantom
from tests.loop_tools import loop_tools
from tests.orthanc import CT_STUDY, orthanc_missing, temp_orthanc
from tools.errors import IngestError, ToolInputError
from tools.ingest.loader import load_image
from tools.vision.basic import basic_tools

CT = get_testdata_file("CT_small.dcm")  # 128 x 128: a quick segmentation
RG1 = get_testdata_file("RG1_UNCI.dcm")
MEDLOOP_MCP = [sys.executable, "-m", "agent.cli", "mcp", "--tool-timeout", "300"]


def script_ask(server, image_path: str) -> None:
    """The planner's replies for one ask (describe, answer) and a follow-up (answer).

    E1 is ``case_answer``'s, asked before the planner's first call; the description is E2.
    """
    image_id = load_image(image_path).content_id()
    server.reply_calls(("describe_image", {"image_id": image_id}))
    server.reply_calls(("final_answer", {
        "answer": "A CT slice.", "confidence": 0.8,
        "claims": [{"statement": "the image is a CT slice", "evidence_ids": ["E2"]}]}))
    server.reply_calls(("final_answer", {
        "answer": "Still the same CT slice.", "confidence": 0.7,
        "claims": [{"statement": "CT", "evidence_ids": ["E2"]}]}))


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


async def exercise(session: ClientSession, image: dict, server) -> None:
    """What both transports must do: list, segment (with its overlay), ask twice, refuse."""
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert {"segment", "describe_image", "measure", "ask"} <= set(tools)
    seg = tools["segment"].inputSchema
    assert "image" in seg["required"] and "image_id" not in seg["properties"]
    assert set(seg["properties"]["image"]["properties"]) >= {"id", "path", "base64", "pacs"}
    assert tools["ask"].inputSchema["required"] == ["question"]

    res = await session.call_tool("segment", {"image": image, "box": [30, 30, 90, 90],
                                              "label": "body"})
    assert not res.isError, res.content[0].text
    ev = res.structuredContent["evidence"]
    assert ev["tool"] == "segment" and ev["mask_keys"] and 0 <= ev["score"] <= 1
    assert res.structuredContent["image"]["id"] == load_image(CT).content_id()
    assert res.content[0].text.startswith("body in box [30, 30, 90, 90]: area")
    png = next(c for c in res.content if c.type == "image")
    assert png.mimeType == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.data))))
    assert overlay.shape == (128, 128, 3)
    assert (overlay[..., 0] != overlay[..., 2]).any()  # the mask and box drawn in colour

    # the mask the call stored is there for the next call: the tools share one store
    res = await session.call_tool("measure", {"image": {"id": ev["image_id"]},
                                              "mask_key": ev["mask_keys"][0]})
    assert not res.isError, res.content[0].text

    res = await session.call_tool("ask", {"question": "What is this?", "images": [image]})
    assert not res.isError, res.content[0].text
    answer = res.structuredContent
    assert answer["answer"] == "A CT slice." and not answer["abstained"]
    assert answer["findings"] == [{"statement": "the image is a CT slice", "evidence_ids": ["E2"]}]
    assert [e["tool"] for e in answer["evidence"]] == ["case_answer", "describe_image"]
    assert "research software, not a medical device" in res.content[0].text
    thread = answer["thread"]
    res = await session.call_tool("ask", {"question": "And now?", "thread": thread})
    assert res.structuredContent["answer"] == "Still the same CT slice."
    assert res.structuredContent["thread"] == thread
    # the thread's, and case_answer asked the new question
    assert [e["id"] for e in res.structuredContent["evidence"]] == ["E1", "E2", "E3"]

    bad = [
        ("segment", {"image": image}, "bad arguments for segment: arguments: Value error, "
                                      "give a box"),
        ("describe_image", {"image": {"id": "img-000000000000"}}, "unknown image id"),
        ("describe_image", {"image": {"path": "/x.dcm", "base64": "AA=="}}, "exactly one way"),
        ("describe_image", {"image": {}}, "Input validation error"),
        ("window", {"image": {"base64": "not base64!"}, "preset": "lung"},
         "image.base64 is not valid base64"),
        ("window", {"image": image, "preset": "sepia"}, "unknown window preset 'sepia'"),
        ("ask", {"question": ""}, "Input validation error"),
        ("no_such_tool", {}, "unknown tool 'no_such_tool'"),
    ]
    for name, args, needle in bad:
        res = await session.call_tool(name, args)
        assert res.isError, name
        assert needle in res.content[0].text, (name, res.content[0].text)
    assert len(server.requests) == 3  # bad calls never reached the planner


def test_over_stdio(server, tmp_path):
    script_ask(server, CT)
    params = StdioServerParameters(
        command=MEDLOOP_MCP[0], args=MEDLOOP_MCP[1:], cwd=str(Path(__file__).parents[3]),
        env=offline_env(MEDLOOP_HOME=str(tmp_path / "home"),
                        MEDLOOP_LLM=f"openai:test@{server.url}"))

    async def main() -> None:
        with (tmp_path / "server.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (r, w), ClientSession(r, w) as s:
                await exercise(s, {"path": CT}, server)

    asyncio.run(main())


def test_over_streamable_http(server, tmp_path):
    script_ask(server, CT)
    port, log = free_port(), tmp_path / "server.log"
    proc = start([*MEDLOOP_MCP, "--transport", "http", "--port", str(port)], log,
                 offline_env(MEDLOOP_HOME=str(tmp_path / "home"),
                             MEDLOOP_LLM=f"openai:test@{server.url}"))
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/mcp", log, 120)

        async def main() -> None:
            async with (streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w, _),
                        ClientSession(r, w) as s):
                await exercise(s, {"base64": b64(CT), "filename": "ct.dcm"}, server)
                # over HTTP a remote caller may not read the server's disk
                res = await s.call_tool("describe_image", {"image": {"path": CT}})
                assert res.isError and "takes no paths" in res.content[0].text

        asyncio.run(main())
    finally:
        # Ctrl-C: uvicorn shuts down, then the CLI exits as interrupted (its code 130)
        assert stop(proc) == 130, log.read_text()[-2000:]


# -- in process -------------------------------------------------------------------------------
def call(service: McpService, name: str, args: dict):
    return asyncio.run(service.call(name, args))


def test_image_paths_only_under_the_roots(store, tmp_path):
    inside = tmp_path / "shared"
    inside.mkdir()
    png = inside / "square.png"
    Image.fromarray(phantom().display).save(png)
    (tmp_path / "secret.png").write_bytes(png.read_bytes())
    rooted = ImageResolver(store, path_roots=[inside])
    assert rooted.refs({"path": str(png)})[0].id in store
    with pytest.raises(ToolInputError, match=r"'secret\.png' is outside the folders"):
        rooted.refs({"path": str(inside / ".." / "secret.png")})
    with pytest.raises(ToolInputError, match="takes no paths"):
        ImageResolver(store, path_roots=[]).refs({"path": str(png)})
    anywhere = ImageResolver(store)  # stdio: the user's own process
    assert anywhere.refs({"path": str(tmp_path / "secret.png")})[0].id in store
    with pytest.raises(IngestError):
        anywhere.refs({"base64": base64.b64encode(b"not an image at all").decode()})
    with pytest.raises(ToolInputError, match="'filename' goes with 'base64'"):
        anywhere.refs({"path": str(png), "filename": "x.png"})
    with pytest.raises(ToolInputError, match="no PACS configured"):
        anywhere.refs({"pacs": {"study_uid": "1.2.3"}})


def test_a_tool_over_its_time_limit_is_an_error_result(store, medloop_home):
    ctx = AgentContext(llm="embedded", home=medloop_home, tool_timeout_s=0.5, checkpoint=None)
    img = store.put(phantom()).id
    tools, _ = loop_tools(store, hang_s=5.0)
    service = McpService(ctx, store=store, tools=tools)
    res = call(service, "hangs", {"image": {"id": img}})
    assert res.isError and res.content[0].text == "hangs timed out after 0.5 s"
    res = call(service, "mean_intensity", {"image": {"id": img}})
    assert not res.isError and res.content[0].text.startswith("mean intensity ")
    assert len(res.content) == 1  # nothing to draw for a mean: no overlay
    res = call(service, "broken", {"image": {"id": img}})
    assert res.isError and res.content[0].text.startswith("broken failed:")


@pytest.mark.orthanc
@pytest.mark.skipif(orthanc_missing() is not None, reason=str(orthanc_missing()))
def test_an_image_by_pacs_study(store, medloop_home):
    with temp_orthanc() as pacs:
        pacs.upload(CT)
        ctx = AgentContext(llm="embedded", home=medloop_home, checkpoint=None,
                           pacs_url=pacs.dicomweb_url, pacs_user=pacs.user,
                           pacs_password=pacs.password)
        service = McpService(ctx, store=store, tools=basic_tools(store))
        res = call(service, "describe_image", {"image": {"pacs": {"study_uid": CT_STUDY}}})
        assert not res.isError, res.content[0].text
        assert res.structuredContent["image"]["id"] == load_image(CT).content_id()
        assert res.content[0].text.startswith("CT")
        # the configured PACS may be named; another address may not (its credentials stay)
        same = {"study_uid": CT_STUDY, "url": pacs.dicomweb_url + "/"}
        assert not call(service, "describe_image", {"image": {"pacs": same}}).isError
        other = {"study_uid": CT_STUDY, "url": "http://198.51.100.7/dicom-web"}
        res = call(service, "describe_image", {"image": {"pacs": other}})
        assert res.isError and "only from its configured PACS" in res.content[0].text
        res = call(service, "describe_image", {"image": {"pacs": {"study_uid": "1.2.3.999"}}})
        assert res.isError and "the image cannot be used" in res.content[0].text


@pytest.mark.parametrize("argv, needle", [
    (["--path-root", "."], "--path-root is for --transport http"),
    (["--transport", "http", "--port", "0"], "--port must be 1 to 65535"),
    (["--transport", "http", "--path-root", "/nonexistent/folder"], "not a folder"),
    (["--ask-timeout", "0"], "--ask-timeout must be positive"),
    (["--tool-timeout", "-1"], "--tool-timeout must be positive"),
    (["--llm", "gpt-4"], "bad --llm"),
    (["--checkpoint", "redis://x"], "bad checkpoint"),
])
def test_medloop_mcp_bad_options_exit_2_before_serving(capsys, argv, needle):
    from agent.cli.main import main

    assert main(["mcp", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_bad_mcp_server_settings_stop_the_command_naming_the_file(capsys, tmp_path, monkeypatch):
    from agent.cli.main import main

    monkeypatch.setenv("MEDLOOP_MCP_SERVERS", str(tmp_path / "servers.json"))
    assert main(["ask", CT, "What is this?", "--llm", "openai:m@http://127.0.0.1:9/v1"]) == 1
    assert "MCP server settings file 'servers.json' not found" in capsys.readouterr().err
