"""agent.llm.text_protocol: the one text protocol of the embedded, openai-json and hf backends."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, Field

from agent.llm.text_protocol import (
    TextToolCalling,
    calls_json,
    describe_tools,
    inline_refs,
    message_text,
    reply_with_tool_calls,
    text_history,
    tools_system_prompt,
)
from prompts import load_prompt
from tests.agent.llm.tool_dicts import SEGMENT, TOOLS

TOOLS_JSON_MARKER = "You can call tools."  # first line of prompts/tools_json
MEASURE = {"type": "function", "function": {
    "name": "measure_distance", "description": "Distance in mm between two points.",
    "parameters": {"type": "object", "properties": {
        "image_id": {"type": "string", "enum": ["img1"]},
        "points": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}},
        "required": ["image_id", "points"]}}}
FINAL_CONSTRAINED = {"type": "function", "function": {
    "name": "final_answer", "description": "Call this when the evidence answers the question.",
    "parameters": {"type": "object", "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "confidence"]}}}


def test_free_text_descriptions_list_enums_and_optionals():
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


def test_constrained_descriptions_are_one_short_line_each():
    text = describe_tools([MEASURE, FINAL_CONSTRAINED], constrained=True)
    assert text.count("\n") == 1
    assert "points: [number x4]" in text
    assert "confidence: number 0 to 1" in text
    assert 'image_id: an image id from "Images"' in text and "img1" not in text


class Box(BaseModel):
    label: str = Field(description="what is in the box")


class Boxes(BaseModel):
    """Draw labelled boxes."""

    boxes: list[Box]
    main: Box | None = Field(default=None, description="the box to draw first")


def test_refs_are_inlined_with_the_fields_own_keys_kept():
    schema = inline_refs(Boxes.model_json_schema())
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    assert schema["properties"]["boxes"]["items"]["properties"]["label"]["type"] == "string"
    assert schema["properties"]["main"]["description"] == "the box to draw first"
    recursive = {"$defs": {"Node": {"type": "object", "properties": {
        "child": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"}
    assert inline_refs(recursive)["properties"]["child"] == {"type": "object"}


def test_text_history_keeps_json_the_model_already_wrote():
    said = '{"tool": "segment", "arguments": {"image_id": "img1"}}'
    history = text_history([AIMessage(content=said, tool_calls=[
        {"name": "segment", "args": {"image_id": "img1"}, "id": "c1", "type": "tool_call"}])])
    assert [m.content for m in history] == [said]
    assert history[0].tool_calls == []  # type: ignore[attr-defined]


def test_text_history_writes_calls_and_merges_results():
    history = text_history([
        HumanMessage(content="q"),
        AIMessage(content="", tool_calls=[
            {"name": "segment", "args": {"image_id": i}, "id": c, "type": "tool_call"}
            for i, c in (("img1", "c1"), ("img2", "c2"))]),
        ToolMessage(content="E1: left", tool_call_id="c1", name="segment"),
        ToolMessage(content="E2: right", tool_call_id="c2")])
    assert [type(m).__name__ for m in history] == ["HumanMessage", "AIMessage", "HumanMessage"]
    assert json.loads(str(history[1].content)) == [
        {"tool": "segment", "arguments": {"image_id": "img1"}},
        {"tool": "segment", "arguments": {"image_id": "img2"}}]
    assert history[2].content == "Result of segment:\nE1: left\n\nResult of c2:\nE2: right"


def test_message_text_and_calls_json():
    assert message_text([{"type": "text", "text": "a"}, "b", {"type": "image_url"}]) == "ab"
    assert message_text(None) == ""
    one = [{"name": "segment", "args": {"label": "poumon é"}}]
    assert json.loads(calls_json(one)) == {"tool": "segment", "arguments": {"label": "poumon é"}}
    assert "é" in calls_json(one)  # written as the model would write it, not \\u00e9


def test_a_reply_keeps_the_calls_it_carries_and_gets_those_written_in_its_text():
    native = AIMessage(content='{"tool": "final_answer", "arguments": {"answer": "x"}}',
                       tool_calls=[{"name": "segment", "args": {"image_id": "img1"},
                                    "id": "n1", "type": "tool_call"}])
    assert reply_with_tool_calls(native, TOOLS) is native  # never parsed twice
    text = AIMessage(content="```json\n{'tool': 'segment', 'arguments': {'image_id': 'img2',},}"
                             "\n```", id="r1", response_metadata={"m": 1})
    ai = reply_with_tool_calls(text, TOOLS)
    assert [c["args"] for c in ai.tool_calls] == [{"image_id": "img2"}]
    assert ai.id == "r1" and ai.response_metadata == {"m": 1, "tool_calls_repaired": True}
    assert ai.content == text.content
    bad = reply_with_tool_calls(AIMessage(content='{"tool": "segmnt", "arguments": {}}'), TOOLS)
    assert not bad.tool_calls and "segment" in bad.invalid_tool_calls[0]["error"]
    answer = AIMessage(content="The lungs are clear.")
    assert reply_with_tool_calls(answer, TOOLS) is answer
    assert reply_with_tool_calls(text, []) is text  # nothing offered: an answer


class _Echo(TextToolCalling, BaseChatModel):
    """Replies with the keyword arguments it was called with."""

    honours: bool = False

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=json.dumps(kwargs, default=str)))])


class _Forcing(_Echo):
    honours_tool_choice = True


def test_bind_tools_converts_tools_and_passes_tool_choice_only_where_honoured():
    def segment(image_id: str) -> str:
        """Segment an organ."""
        return image_id

    sent = json.loads(str(_Echo().bind_tools([segment], tool_choice="segment").invoke("q").content))
    assert sent["tools"][0]["function"]["name"] == "segment" and "tool_choice" not in sent
    forced = json.loads(str(_Forcing().bind_tools([SEGMENT], tool_choice="segment")
                            .invoke("q").content))
    assert forced["tool_choice"] == "segment" and forced["tools"] == [SEGMENT]
