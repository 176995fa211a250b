"""agent.llm.toolcalls: find, repair and validate tool calls written as text."""

from __future__ import annotations

import json
import re

import pytest

from agent.llm.toolcalls import (
    ParsedToolCalls,
    loads_lenient,
    parse_tool_calls,
    repair_json,
    tool_parameters,
    validate_args,
)

SEGMENT = {
    "type": "function",
    "function": {
        "name": "segment",
        "description": "Segment an organ.",
        "parameters": {
            "type": "object",
            "properties": {
                "image_id": {"type": "string", "enum": ["img1", "img2"]},
                "target": {"type": "string"},
                "box": {
                    "anyOf": [
                        {"type": "array", "items": {"type": "number"}, "minItems": 4,
                         "maxItems": 4},
                        {"type": "null"},
                    ],
                    "default": None,
                },
                "k": {"type": "integer", "minimum": 1, "default": 1},
                "refine": {"type": "boolean", "default": False},
            },
            "required": ["image_id"],
        },
    },
}
FINAL = {
    "type": "function",
    "function": {
        "name": "final_answer",
        "description": "Answer.",
        "parameters": {
            "$defs": {
                "Claim": {
                    "type": "object",
                    "properties": {
                        "statement": {"type": "string", "maxLength": 50},
                        "evidence_ids": {"type": "array", "items": {"type": "string",
                                                                    "enum": ["E1", "E2"]}},
                    },
                    "required": ["statement", "evidence_ids"],
                }
            },
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "claims": {"type": "array", "items": {"$ref": "#/$defs/Claim"}},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["answer"],
        },
    },
}
TOOLS = [SEGMENT, FINAL]
SEG1 = ("segment", {"image_id": "img1"})


def calls(parsed: ParsedToolCalls) -> list[tuple[str, dict]]:
    return [(c["name"], c["args"]) for c in parsed.calls]


def only_error(parsed: ParsedToolCalls) -> str:
    assert parsed.calls == []
    assert len(parsed.invalid) == 1, parsed.invalid
    return parsed.invalid[0]["error"]


# --- shapes and where the JSON sits -------------------------------------------------------

SHAPES = {
    "ours": '{"tool": "segment", "arguments": {"image_id": "img1"}}',
    "name+arguments": '{"name": "segment", "arguments": {"image_id": "img1"}}',
    "name+args": '{"name": "segment", "args": {"image_id": "img1"}}',
    "llama parameters":
        '{"type": "function", "name": "segment", "parameters": {"image_id": "img1"}}',
    "openai wire, string args": json.dumps(
        {"id": "x", "type": "function",
         "function": {"name": "segment", "arguments": json.dumps({"image_id": "img1"})}}
    ),
    "arguments as a string": json.dumps({"tool": "segment", "arguments": '{"image_id": "img1"}'}),
    "flattened": '{"tool": "segment", "image_id": "img1"}',
    "keyed by tool": '{"segment": {"image_id": "img1"}}',
    "tool_calls wrapper": json.dumps(
        {"tool_calls": [{"type": "function",
                         "function": {"name": "segment", "arguments": '{"image_id": "img1"}'}}]}
    ),
    "functions. prefix": '{"name": "functions.segment", "arguments": {"image_id": "img1"}}',
    "case and dashes": '{"tool": "Segment", "arguments": {"image_id": "img1"}}',
}


@pytest.mark.parametrize("text", SHAPES.values(), ids=SHAPES.keys())
def test_each_call_shape(text):
    parsed = parse_tool_calls(text, TOOLS)
    assert calls(parsed) == [SEG1]
    assert parsed.invalid == []


CALL = '{"tool": "segment", "arguments": {"image_id": "img1"}}'
PLACES = {
    "bare": CALL,
    "json fence": f"```json\n{CALL}\n```",
    "plain fence": f"```\n{CALL}\n```",
    "fence among prose": f"I will segment first.\n```json\n{CALL}\n```\nThen I answer.",
    "hermes tag": f"<tool_call>\n{CALL}\n</tool_call>",
    "hermes tag, unclosed": f"<tool_call>\n{CALL}",
    "prose before and after": f"Let me look. {CALL} That should show the lungs.",
    "after a reasoning block": '<think>maybe {"tool": "final_answer", "arguments": '
                               '{"answer": "x"}}</think>' + CALL,
    "after a closed reasoning block only": "I should segment.</think>\n" + CALL,
    "after a non-JSON fence": f"```python\nprint(1)\n```\nNow: {CALL}",
}


@pytest.mark.parametrize("text", PLACES.values(), ids=PLACES.keys())
def test_json_is_found_wherever_it_sits(text):
    assert calls(parse_tool_calls(text, TOOLS)) == [SEG1]


def test_several_calls_in_a_list_tags_and_fences():
    second = '{"tool": "final_answer", "arguments": {"answer": "clear"}}'
    expected = [SEG1, ("final_answer", {"answer": "clear"})]
    for text in (
        f"[{CALL}, {second}]",
        f"<tool_call>{CALL}</tool_call>\n<tool_call>{second}</tool_call>",
        f"```json\n{CALL}\n```\nand\n```json\n{second}\n```",
        f"{CALL}\n{second}",
    ):
        assert calls(parse_tool_calls(text, TOOLS)) == expected, text


def test_ids_are_fresh_and_typed():
    parsed = parse_tool_calls(f"[{CALL}, {CALL}]", TOOLS)
    ids = [c["id"] for c in parsed.calls]
    assert all(re.fullmatch(r"call_[0-9a-f]+", i) for i in ids)
    assert len(set(ids)) == 2
    assert all(c["type"] == "tool_call" for c in parsed.calls)


# --- repairs --------------------------------------------------------------------------------

REPAIRS = {
    "trailing commas": '{"tool": "segment", "arguments": {"image_id": "img1",},}',
    "trailing comma in list": '[{"tool": "segment", "arguments": {"image_id": "img1"}},]',
    "single quotes": "{'tool': 'segment', 'arguments': {'image_id': 'img1'}}",
    "python literals": '{"tool": "segment", "arguments": {"image_id": "img1", "box": None, '
                       '"refine": False}}',
    "unquoted keys": '{tool: "segment", arguments: {image_id: "img1"}}',
    "unquoted value": '{"tool": segment, "arguments": {"image_id": img1}}',
    "line comment": '{"tool": "segment", // the segmenter\n "arguments": {"image_id": "img1"}}',
    "block comment": '{"tool": "segment", /* why */ "arguments": {"image_id": "img1"}}',
    "hash comment": '{"tool": "segment",  # the segmenter\n "arguments": {"image_id": "img1"}}',
    "truncated after value": '{"tool": "segment", "arguments": {"image_id": "img1"',
    "truncated inside string": '{"tool": "segment", "arguments": {"image_id": "img1',
    "truncated after comma": '{"tool": "segment", "arguments": {"image_id": "img1", ',
    "truncated after key": '{"tool": "segment", "arguments": {"image_id": "img1", "targ',
    "missing commas": '{"tool": "segment" "arguments": {"image_id": "img1"}}',
    "missing colon": '{"tool" "segment", "arguments" {"image_id" "img1"}}',
    "equals for colon": '{tool = "segment", arguments = {image_id = "img1"}}',
    "doubled comma": '{"tool": "segment",, "arguments": {"image_id": "img1"}}',
    "stray closer": '{"tool": "segment", "arguments": {"image_id": "img1"}]}',
    "single-quoted args string": json.dumps(
        {"function": {"name": "segment", "arguments": "{'image_id': 'img1',}"}}
    ),
}


@pytest.mark.parametrize("text", REPAIRS.values(), ids=REPAIRS.keys())
def test_each_repair(text):
    parsed = parse_tool_calls(text, TOOLS)
    assert [c["name"] for c in parsed.calls] == ["segment"], parsed.invalid
    assert parsed.calls[0]["args"]["image_id"] == "img1"
    assert parsed.repaired


@pytest.mark.parametrize(
    ("broken", "value"),
    [
        ("{'a': 'it\\'s', \"b\": \"say \\\"hi\\\"\"}", {"a": "it's", "b": 'say "hi"'}),
        ('{"a": [1, 2,, 3,], "b": {"c": True,},}', {"a": [1, 2, 3], "b": {"c": True}}),
        ('{"a": .5, "b": +3, "c": 1e3, "d": NaN, "e": undefined}',
         {"a": 0.5, "b": 3, "c": 1000.0, "d": None, "e": None}),
        ('{"a": "line\nbreak", "b": "\\u00e9\\d"}', {"a": "line\nbreak", "b": "é\\d"}),
        ('{"a": {"b": [1, {"c": "x', {"a": {"b": [1, {"c": "x"}]}}),
        ('{"a": 1, "b":', {"a": 1, "b": None}),
        ('{"a": 1} and then some prose', {"a": 1}),
        ("[]", []),
    ],
)
def test_repair_json_values(broken, value):
    assert json.loads(repair_json(broken)) == value


def test_strict_json_is_not_rewritten():
    value, error, repaired = loads_lenient('{"a": [1, "x"]}')
    assert (value, error, repaired) == ({"a": [1, "x"]}, None, False)


def test_nothing_is_evaluated():
    # A Python expression is data to the repair: it never runs.
    text = '{"tool": "segment", "arguments": {"image_id": __import__("os").getcwd()}}'
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.calls == []
    assert parsed.invalid  # reported, not executed


# --- plain answers --------------------------------------------------------------------------

PLAIN = {
    "no json": "The lungs are clear; no pneumothorax.",
    "empty": "",
    "whitespace": "  \n ",
    "brackets in prose": "Both lungs [left and right] look {roughly} symmetric; I don't see more.",
    "data json in prose": 'The finding was {"name": "nodule", "size_mm": 4} on the left.',
    "a list of numbers": "Sizes were [3, 4, 5] mm.",
    "only reasoning": '<think>{"tool": "segment", "arguments": {"image_id": "img1"}}</think>'
                      "The lungs are clear.",
    "reasoning cut off": '<think>I could call {"tool": "segment", "arguments": {"image_id": ',
}


@pytest.mark.parametrize("text", PLAIN.values(), ids=PLAIN.keys())
def test_plain_answers_have_no_calls(text):
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.calls == []
    assert parsed.invalid == []


# --- errors the model can act on ------------------------------------------------------------


def test_unknown_tool_lists_tools_and_suggests():
    parsed = parse_tool_calls('{"tool": "segmnt", "arguments": {"image_id": "img1"}}', TOOLS)
    error = only_error(parsed)
    assert "unknown tool 'segmnt'" in error
    assert "did you mean 'segment'" in error.lower()
    assert "final_answer" in error and "segment" in error
    bad = parsed.invalid[0]
    assert bad["name"] == "segmnt"
    assert bad["type"] == "invalid_tool_call"
    assert json.loads(bad["args"]) == {"image_id": "img1"}
    assert bad["id"].startswith("call_")


def test_unknown_tool_with_no_tools_offered():
    error = only_error(parse_tool_calls(CALL, []))
    assert "no tools are available" in error


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ({}, ["missing required argument 'image_id'"]),
        ({"image_id": "img9"}, ["'image_id'", "img9", "not one of", "'img1'"]),
        ({"image_id": "img1", "k": 0}, ["'k'", ">= 1"]),
        ({"image_id": "img1", "k": "many"}, ["'k'", "integer", "string"]),
        ({"image_id": "img1", "k": 2.5}, ["'k'", "integer", "number"]),
        ({"image_id": "img1", "box": [1, 2, 3]}, ["'box'", "at least 4"]),
        ({"image_id": "img1", "box": "1,2,3,4"}, ["'box'", "array", "string"]),
        ({"image_id": "img1", "refine": "maybe"}, ["'refine'", "boolean"]),
        ({"image_id": 3}, ["'image_id'", "string", "integer"]),
    ],
)
def test_schema_errors_name_the_field(args, fragments):
    text = json.dumps({"tool": "segment", "arguments": args})
    error = only_error(parse_tool_calls(text, TOOLS))
    assert error.startswith("tool 'segment':")
    for fragment in fragments:
        assert fragment in error, error


def test_nested_errors_follow_refs_and_name_the_path():
    args = {"answer": "x", "confidence": 1.5,
            "claims": [{"statement": "ok", "evidence_ids": ["E1"]},
                       {"statement": "y" * 60, "evidence_ids": ["E7"]}]}
    error = only_error(parse_tool_calls(json.dumps({"tool": "final_answer", "arguments": args}),
                                        TOOLS))
    assert "'confidence' must be <= 1" in error
    assert "'claims[1].statement'" in error and "at most 50" in error
    assert "'claims[1].evidence_ids[0]'" in error and "E7" in error


def test_lax_values_are_coerced_like_pydantic_would():
    text = json.dumps({"tool": "segment",
                       "arguments": {"image_id": "img1", "k": "3", "refine": "true",
                                     "box": ["1", 2, 3.5, 4]}})
    assert calls(parse_tool_calls(text, TOOLS)) == [
        ("segment", {"image_id": "img1", "k": 3, "refine": True, "box": [1.0, 2, 3.5, 4]})
    ]
    assert calls(parse_tool_calls(text.replace('"3"', "2.0"), TOOLS))[0][1]["k"] == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"tool": "segment", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"tool": "segment", "arguments": ":::"}', "not valid JSON"),
        ('{"answer": "the lungs are clear"}', "names no tool"),
        ("<tool_call>\nsegment image_id=img1\n</tool_call>", "the tool call is not JSON"),
        ("<tool_call>\n{]}\n</tool_call>", "names no tool"),
        ('<tool_call>{"note": 1}</tool_call>', "names no tool"),
    ],
)
def test_malformed_calls_become_invalid_not_exceptions(text, fragment):
    assert fragment in only_error(parse_tool_calls(text, TOOLS))


def test_valid_and_invalid_calls_are_kept_apart():
    text = f'[{CALL}, {{"tool": "nope", "arguments": {{}}}}]'
    parsed = parse_tool_calls(text, TOOLS)
    assert calls(parsed) == [SEG1]
    assert [c["name"] for c in parsed.invalid] == ["nope"]


@pytest.mark.parametrize(
    "text",
    ["{", "[", "}", '{"', "'", "{'", "<tool_call>", "```", "```json\n{", '{"tool": "segment", "a',
     "{" * 500 + "}" * 3, '"\\', "{:::,,,}", "[[[[[", CALL * 3, "\x00{\ud800}",
     "[" * 100_000],
)
def test_garbage_never_raises(text):
    parsed = parse_tool_calls(text, TOOLS)
    assert isinstance(parsed, ParsedToolCalls)


# --- the pieces -----------------------------------------------------------------------------


def test_tool_parameters_accepts_openai_and_flat_dicts():
    specs = tool_parameters([SEGMENT, {"name": "flat", "parameters": {"type": "object"}},
                             {"name": "noparams"}])
    assert set(specs) == {"segment", "flat", "noparams"}
    assert specs["noparams"] == {}


def test_validate_args_reports_unexpected_when_forbidden():
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "additionalProperties": False}
    _, errors = validate_args({"a": "x", "b": 1}, schema)
    assert errors == ["unexpected argument 'b' (accepted: a)"]
    _, errors = validate_args({"a": "x", "b": 1}, {"type": "object",
                                                   "properties": {"a": {"type": "string"}}})
    assert errors == []
