"""agent.llm.openai_compat (and its json mode), against a local scripted OpenAI server.

The server is stdlib ``http.server`` on 127.0.0.1 (an OS-chosen port): it answers chat
completions from a queue of scripted replies and records every request, so the tests check
both what the model returned and what went over the wire. Nothing leaves the loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.llm import parse_spec
from agent.llm.json_tools import JsonToolsChatModel
from agent.llm.openai_compat import DEFAULT_MAX_TOKENS, OpenAIServerError, make_openai_model
from tests.agent.llm.tool_dicts import TOOLS

QUESTION = [SystemMessage(content="You are medloop."), HumanMessage(content="Segment the lungs.")]
TOOLS_JSON_MARKER = "You can call tools."  # first line of prompts/tools_json


# --- the scripted server ------------------------------------------------------------------


def system_text(request: dict[str, Any]) -> str:
    first = request["body"]["messages"][0]
    assert first["role"] == "system"
    return first["content"] if isinstance(first["content"], str) else json.dumps(first["content"])


# --- native tool calling ------------------------------------------------------------------


def test_native_tool_calls_round_trip(server):
    server.reply_calls(("segment", {"image_id": "img1"}), ("segment", {"image_id": "img2"}))
    model = make_openai_model(parse_spec(f"openai:test-model@{server.url}"))
    ai = model.bind_tools(TOOLS).invoke(QUESTION)

    assert isinstance(ai, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in ai.tool_calls] == [
        ("segment", {"image_id": "img1"}, "call_0"), ("segment", {"image_id": "img2"}, "call_1")]
    (request,) = server.requests
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    # A local server gets the reply bound under the name it reads (not max_completion_tokens).
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS and "max_completion_tokens" not in body
    assert [t["function"]["name"] for t in body["tools"]] == ["segment", "final_answer"]
    assert TOOLS_JSON_MARKER not in system_text(request)  # native: tools are not in the prompt
    assert request["headers"]["authorization"] == "Bearer not-needed"


def test_native_history_keeps_the_wire_format(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    server.reply_text("The lungs are clear.")
    model = make_openai_model(parse_spec(f"openai:m@{server.url}"))
    history = [*QUESTION,
               AIMessage(content="", tool_calls=[{"name": "segment", "args": {"image_id": "img1"},
                                                  "id": "call_a", "type": "tool_call"}]),
               ToolMessage(content="E1: left lung 120 cm2", tool_call_id="call_a")]
    ai = model.bind_tools(TOOLS).invoke(history)
    assert ai.content == "The lungs are clear." and ai.tool_calls == []
    sent = server.requests[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "segment"
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-local"


def test_native_server_answering_with_json_text_still_gets_its_calls_read(server):
    # A model the server's tool-call parser does not know writes the call as text; the backend
    # reads it (the graph never parses text), and a plain answer stays an answer.
    server.reply_text('<tool_call>{"name": "segment", "arguments": {"image_id": "img2"}}')
    server.reply_text("The lungs are clear.")
    model = make_openai_model(parse_spec(f"openai:m@{server.url}"))
    assert model.returns_parsed_tool_calls  # type: ignore[attr-defined]
    bound = model.bind_tools(TOOLS)
    ai = bound.invoke(QUESTION)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("segment", {"image_id": "img2"})]
    assert ai.content.startswith("<tool_call>")
    plain = bound.invoke(QUESTION)
    assert (plain.tool_calls, plain.invalid_tool_calls) == ([], [])
    assert plain.content == "The lungs are clear."
    assert "tools" in server.requests[0]["body"]  # still a native request


def test_temperature_is_an_argument(server):
    server.reply_text("ok")
    model = make_openai_model(parse_spec(f"openai:m@{server.url}"), temperature=0.7)
    model.invoke(QUESTION)
    assert server.requests[0]["body"]["temperature"] == 0.7


# --- JSON mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        '{"tool": "segment", "arguments": {"image_id": "img1"}}',
        '```json\n{"tool": "segment", "arguments": {"image_id": "img1",},}\n```',
        "I'll segment it.\n{'tool': 'segment', 'arguments': {'image_id': 'img1', 'box': None}}",
        '<tool_call>{"name": "segment", "arguments": {"image_id": "img1"',
    ],
    ids=["clean", "fenced, trailing commas", "prose, python literals", "hermes, truncated"],
)
def test_json_mode_reads_and_repairs_calls(server, reply):
    server.reply_text(reply)
    model = make_openai_model(parse_spec(f"openai-json:small@{server.url}"))
    assert isinstance(model, JsonToolsChatModel)
    ai = model.bind_tools(TOOLS).invoke(QUESTION)

    assert [c["name"] for c in ai.tool_calls] == ["segment"]
    assert ai.tool_calls[0]["args"]["image_id"] == "img1"
    assert ai.tool_calls[0]["id"].startswith("call_")
    assert ai.invalid_tool_calls == []
    assert ai.content == reply  # what the model said is kept for the trace
    (request,) = server.requests
    assert "tools" not in request["body"]
    assert "tool_choice" not in request["body"]
    system = system_text(request)
    assert system.startswith("You are medloop.")
    assert TOOLS_JSON_MARKER in system
    assert '- segment(image_id: "img1"|"img2", box?: list of number)' in system
    assert "- final_answer(" in system


def test_json_mode_bad_calls_come_back_invalid(server):
    server.reply_text('{"tool": "segmnt", "arguments": {"image_id": "img1"}}')
    server.reply_text('{"tool": "segment", "arguments": {"image_id": "img7"}}')
    server.reply_text("The lungs look clear to me.")
    model = make_openai_model(parse_spec(f"openai-json:small@{server.url}")).bind_tools(TOOLS)

    unknown = model.invoke(QUESTION)
    assert unknown.tool_calls == []
    assert "did you mean 'segment'" in unknown.invalid_tool_calls[0]["error"].lower()
    bad_enum = model.invoke(QUESTION)
    assert "'image_id'" in bad_enum.invalid_tool_calls[0]["error"]
    plain = model.invoke(QUESTION)
    assert (plain.tool_calls, plain.invalid_tool_calls) == ([], [])
    assert plain.content == "The lungs look clear to me."


def test_json_mode_sends_history_as_text(server):
    server.reply_text('{"tool": "final_answer", "arguments": {"answer": "clear"}}')
    model = make_openai_model(parse_spec(f"openai-json:small@{server.url}")).bind_tools(TOOLS)
    history = [HumanMessage(content="Segment the lungs."),
               AIMessage(content="", tool_calls=[
                   {"name": "segment", "args": {"image_id": i}, "id": c, "type": "tool_call"}
                   for i, c in (("img1", "c1"), ("img2", "c2"))
               ]),
               ToolMessage(content="E1: left lung", tool_call_id="c1", name="segment"),
               ToolMessage(content="E2: right lung", tool_call_id="c2", name="segment")]
    ai = model.invoke(history)
    assert ai.tool_calls[0]["args"] == {"answer": "clear"}

    sent = server.requests[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert all("tool_calls" not in m for m in sent)
    assert json.loads(sent[2]["content"]) == [
        {"tool": "segment", "arguments": {"image_id": "img1"}},
        {"tool": "segment", "arguments": {"image_id": "img2"}}]
    assert "E1: left lung" in sent[3]["content"] and "E2: right lung" in sent[3]["content"]


def test_json_mode_async(server):
    server.reply_text('{"tool": "segment", "arguments": {"image_id": "img2"}}')
    model = make_openai_model(parse_spec(f"openai-json:small@{server.url}")).bind_tools(TOOLS)
    ai = asyncio.run(model.ainvoke(QUESTION))
    assert ai.tool_calls[0]["args"] == {"image_id": "img2"}


# --- errors -------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["openai", "openai-json"])
def test_unreachable_server_fails_fast_and_clearly(monkeypatch, kind):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    model = make_openai_model(parse_spec(f"{kind}:m@{url}"), timeout_s=5)
    t0 = time.perf_counter()
    with pytest.raises(OpenAIServerError, match="cannot reach") as err:
        model.bind_tools(TOOLS).invoke(QUESTION)
    assert time.perf_counter() - t0 < 15
    assert url in str(err.value)
    assert "'m'" in str(err.value)


def test_wrong_base_url_says_so(server):
    model = make_openai_model(parse_spec(f"openai:m@{server.url.removesuffix('/v1')}/api"))
    with pytest.raises(OpenAIServerError, match=r"404.*/v1"):
        model.invoke(QUESTION)


def test_server_without_tool_parser_suggests_json_mode(server):
    server.reply_error(400, '"auto" tool choice requires --enable-auto-tool-choice and '
                            "--tool-call-parser to be set")
    model = make_openai_model(parse_spec(f"openai:qwen@{server.url}"))
    with pytest.raises(OpenAIServerError, match="openai-json:qwen@"):
        model.bind_tools(TOOLS).invoke(QUESTION)


def test_make_openai_model_rejects_other_specs():
    with pytest.raises(ValueError, match="not an OpenAI"):
        make_openai_model(parse_spec("hf:some/model"))


def test_openai_itself_gets_max_completion_tokens():
    model = make_openai_model(parse_spec("openai:gpt-x@https://api.openai.com/v1"), max_tokens=77)
    payload = model._get_request_payload(QUESTION)  # type: ignore[attr-defined]
    assert payload["max_completion_tokens"] == 77 and "max_tokens" not in payload
