"""agent.llm.openai_compat and agent.llm.json_tools, against a local scripted OpenAI server.

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
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, Field

from agent.llm import parse_spec
from agent.llm.json_tools import (
    JsonToolsChatModel,
    describe_tools,
    text_history,
    tools_system_prompt,
)
from agent.llm.openai_compat import DEFAULT_MAX_TOKENS, OpenAIServerError, make_openai_model
from prompts import load_prompt

SEGMENT = {
    "type": "function",
    "function": {
        "name": "segment",
        "description": "Segment an organ in an image.",
        "parameters": {
            "type": "object",
            "properties": {
                "image_id": {"type": "string", "enum": ["img1", "img2"],
                             "description": "which image"},
                "box": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                  {"type": "null"}], "default": None},
            },
            "required": ["image_id"],
        },
    },
}
FINAL = {
    "type": "function",
    "function": {
        "name": "final_answer",
        "description": "Answer the question.",
        "parameters": {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "claims": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"statement": {"type": "string"},
                                   "evidence_ids": {"type": "array",
                                                    "items": {"type": "string", "enum": ["E1"]}}},
                    "required": ["statement", "evidence_ids"]}},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["answer"],
        },
    },
}
TOOLS = [SEGMENT, FINAL]
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


# --- JsonToolsChatModel with a scripted inner model ----------------------------------------


class RecordingChat(BaseChatModel):
    """A text-only chat model: replays ``script`` and records prompts and keyword arguments."""

    script: list[str]
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    kwargs: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.prompts.append(list(messages))
        self.kwargs.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=self.script.pop(0), id="inner-1", response_metadata={"inner": True}))])


class Measure(BaseModel):
    """Measure a distance in millimetres."""

    image_id: str = Field(description="the image")
    points: list[list[float]] = Field(description="two points, (x, y) pixels")


def test_system_prompt_is_created_when_missing_and_extra_kwargs_are_not_forwarded():
    inner = RecordingChat(script=['{"tool": "Measure", "arguments": {"image_id": "img1", '
                                  '"points": [[0, 0], [3, 4]]}}'])
    model = JsonToolsChatModel(inner=inner)
    ai = model.bind_tools([Measure], tool_choice="any").invoke("How far apart?")

    assert ai.tool_calls[0]["name"] == "Measure"
    assert ai.tool_calls[0]["args"]["points"] == [[0, 0], [3, 4]]
    assert ai.response_metadata["inner"] is True
    prompt = inner.prompts[0]
    assert isinstance(prompt[0], SystemMessage)
    assert prompt[0].content == tools_system_prompt([model_tool(Measure)])
    assert isinstance(prompt[1], HumanMessage)
    assert inner.kwargs == [{}]


def model_tool(schema: type[BaseModel]) -> dict[str, Any]:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return convert_to_openai_tool(schema)


def test_without_tools_the_wrapper_passes_text_through():
    inner = RecordingChat(script=['{"tool": "segment", "arguments": {"image_id": "img1"}}'])
    ai = JsonToolsChatModel(inner=inner).invoke(QUESTION)
    assert ai.tool_calls == []  # nothing was offered, so nothing is parsed
    assert inner.prompts[0][0].content == "You are medloop."


def test_describe_tools_is_one_line_per_tool_with_enums_and_optionals():
    text = describe_tools(TOOLS)
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0] == ('- segment(image_id: "img1"|"img2", box?: list of number): '
                        "Segment an organ in an image. — image_id: which image")
    assert lines[1].startswith('- final_answer(answer: string, claims?: list of '
                               '{statement: string, evidence_ids: list of "E1"}, '
                               "confidence?: number): Answer the question.")
    assert "$tools" not in tools_system_prompt(TOOLS)
    assert load_prompt("tools_json").text.startswith(TOOLS_JSON_MARKER)


def test_text_history_keeps_json_the_model_already_wrote():
    said = '{"tool": "segment", "arguments": {"image_id": "img1"}}'
    history = text_history([AIMessage(content=said, tool_calls=[
        {"name": "segment", "args": {"image_id": "img1"}, "id": "c1", "type": "tool_call"}])])
    assert [m.content for m in history] == [said]
    assert history[0].tool_calls == []  # type: ignore[attr-defined]


def test_openai_itself_gets_max_completion_tokens():
    model = make_openai_model(parse_spec("openai:gpt-x@https://api.openai.com/v1"), max_tokens=77)
    payload = model._get_request_payload(QUESTION)  # type: ignore[attr-defined]
    assert payload["max_completion_tokens"] == 77 and "max_tokens" not in payload
