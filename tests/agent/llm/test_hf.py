"""agent.llm.hf on a tiny random Llama and a tokenizer built here: no hub, no downloaded weights.

The tokenizer is a byte-level BPE trained in-process on a few lines (``tokenizers``), given a
ChatML template (with and without tool support), and saved beside a randomly initialised
2-layer Llama. ``HFChatModel`` then loads the folder through the real transformers path. The
model's text is garbage; what is tested is the load → template → generate → decode → parse path,
and the parse of a scripted decode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.llm import make_chat_model
from agent.llm.hf import (
    HFChatModel,
    HFModelError,
    _source,
    clear_model_cache,
    decode_reply,
    message_from_output,
    render_prompt,
    template_supports_tools,
)

SEGMENT = {
    "type": "function",
    "function": {
        "name": "segment",
        "description": "Segment an organ.",
        "parameters": {"type": "object",
                       "properties": {"image_id": {"type": "string", "enum": ["img1"]}},
                       "required": ["image_id"]},
    },
}
TOOLS = [SEGMENT]
QUESTION = [SystemMessage(content="You are medloop."), HumanMessage(content="Segment the lungs.")]
TOOLS_JSON_MARKER = "You can call tools."

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A cut-down Qwen2.5 template: tools in the system turn, calls as <tool_call> JSON, results
# as <tool_response>.
CHATML_TOOLS = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "Call a function with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{%- endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'system' %}"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n{{ m.content }}"
    "{% for tc in m.tool_calls %}<tool_call>\n{\"name\": \"{{ tc.function.name }}\", "
    "\"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM = (
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}" + CHATML
)


def _build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Segment the lungs in img1 and measure the nodule.",
        '{"tool": "segment", "arguments": {"image_id": "img1"}}',
        "<tool_call> You are medloop, a research assistant. </tool_call>",
    ] * 10
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.add_tokens(["<tool_call>", "</tool_call>"])  # ordinary added tokens, as in Qwen2.5
    return fast


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders with the same random Llama and the tokenizer under different chat templates."""
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()  # transformers' model classes import torchvision (see shared/MODELS.md)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folders = {}
    for name, template in (("plain", CHATML), ("tools", CHATML_TOOLS), ("nosystem", NO_SYSTEM)):
        folder = tmp_path_factory.mktemp(f"tiny-llama-{name}")
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
        folders[name] = folder
    yield folders
    clear_model_cache()


def test_generates_through_load_template_generate_parse(tiny_models):
    model = HFChatModel(model_id=str(tiny_models["plain"]), max_new_tokens=8)
    ai = model.bind_tools(TOOLS).invoke(QUESTION)
    assert isinstance(ai, AIMessage)
    assert isinstance(ai.content, str)
    assert 0 < ai.usage_metadata["output_tokens"] <= 8
    assert ai.usage_metadata["input_tokens"] > 20
    assert ai.response_metadata["device"] == "cpu"
    # Garbage text is fine; it must come back as a message, its JSON (if any) parsed not raised.
    assert isinstance(ai.tool_calls, list)
    # Greedy decoding: the same prompt gives the same reply.
    assert model.bind_tools(TOOLS).invoke(QUESTION).content == ai.content
    # A per-call temperature samples (random weights: near-uniform tokens, so replies differ).
    sampled = {model.invoke(QUESTION, temperature=1.5).content for _ in range(3)}
    assert len(sampled) > 1
    with pytest.raises(HFModelError, match="temperature"):
        model.invoke(QUESTION, temperature=-1)


def test_weights_load_once_per_process(tiny_models):
    a = HFChatModel(model_id=str(tiny_models["plain"]))
    b = HFChatModel(model_id=str(tiny_models["plain"]), max_new_tokens=4)
    assert a.load()[1] is b.load()[1]


def test_spec_builds_the_model(tiny_models):
    model = make_chat_model(f"hf:{tiny_models['plain']}")
    assert isinstance(model, HFChatModel)
    assert model.model_id == str(tiny_models["plain"])


def test_template_without_tools_gets_the_json_prompt(tiny_models):
    model = HFChatModel(model_id=str(tiny_models["plain"]))
    tokenizer, _ = model.load()
    assert not template_supports_tools(tokenizer)
    history = [*QUESTION,
               AIMessage(content="", tool_calls=[{"name": "segment", "args": {"image_id": "img1"},
                                                  "id": "c1", "type": "tool_call"}]),
               ToolMessage(content="E1: both lungs", tool_call_id="c1", name="segment")]
    prompt = model.render_prompt(history, TOOLS)
    assert prompt.startswith("<|im_start|>system\nYou are medloop.\n\n" + TOOLS_JSON_MARKER)
    assert '- segment(image_id: "img1"): Segment an organ.' in prompt
    assert '<|im_start|>assistant\n{"tool": "segment", "arguments": {"image_id": "img1"}}' in prompt
    assert "<|im_start|>user\nResult of segment:\nE1: both lungs<|im_end|>" in prompt
    assert "<|im_start|>tool" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_template_with_tools_gets_them_natively(tiny_models):
    model = HFChatModel(model_id=str(tiny_models["tools"]), max_new_tokens=4)
    tokenizer, _ = model.load()
    assert template_supports_tools(tokenizer)
    history = [*QUESTION,
               AIMessage(content="", tool_calls=[{"name": "segment", "args": {"image_id": "img1"},
                                                  "id": "c1", "type": "tool_call"}]),
               ToolMessage(content="E1: both lungs", tool_call_id="c1", name="segment")]
    prompt = model.render_prompt(history, TOOLS)
    assert TOOLS_JSON_MARKER not in prompt
    assert "<tools>\n" in prompt and '"name": "segment"' in prompt
    assert HERMES in prompt
    assert "<tool_response>\nE1: both lungs\n</tool_response>" in prompt
    # and it generates through that path too
    assert isinstance(model.bind_tools(TOOLS).invoke(history), AIMessage)


def test_template_refusing_a_system_turn_gets_it_folded(tiny_models):
    model = HFChatModel(model_id=str(tiny_models["nosystem"]))
    prompt = model.render_prompt(QUESTION, TOOLS)
    assert prompt.startswith("<|im_start|>user\nYou are medloop.\n\n" + TOOLS_JSON_MARKER)
    assert "Segment the lungs.<|im_end|>" in prompt


def test_no_chat_template_is_a_clear_error(tiny_models):
    tokenizer = HFChatModel(model_id=str(tiny_models["plain"])).load()[0]
    bare = type(tokenizer).from_pretrained(tiny_models["plain"])
    bare.chat_template = None
    with pytest.raises(HFModelError, match="no chat template"):
        render_prompt(bare, QUESTION, TOOLS)


# --- the decode → parse step --------------------------------------------------------------

HERMES = '<tool_call>\n{"name": "segment", "arguments": {"image_id": "img1"}}\n</tool_call>'


def test_decoded_tool_call_tokens_become_a_tool_call(tiny_models):
    tokenizer = HFChatModel(model_id=str(tiny_models["tools"])).load()[0]
    ids = tokenizer.encode(HERMES + "<|im_end|><|endoftext|>", add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids("<tool_call>") in ids
    text = decode_reply(tokenizer, ids)
    assert text == HERMES  # end-of-turn and padding dropped, the tags kept
    ai = message_from_output(text, TOOLS)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("segment", {"image_id": "img1"})]
    assert ai.content == HERMES


@pytest.mark.parametrize(
    ("decoded", "name", "valid"),
    [
        (HERMES, "segment", True),
        ('{"name": "segment", "parameters": {"image_id": "img1"}}', "segment", True),  # llama 3.1
        ('<tool_call>\n{"name": "segment", "arguments": {"image_id": "img1"', "segment", True),
        ('<tool_call>\n{"name": "segmentation", "arguments": {}}\n</tool_call>', "segmentation",
         False),
        ("The lungs are clear.", None, None),
    ],
)
def test_message_from_output(decoded, name, valid):
    ai = message_from_output(decoded, TOOLS)
    if name is None:
        assert (ai.tool_calls, ai.invalid_tool_calls) == ([], [])
    elif valid:
        assert ai.tool_calls[0]["name"] == name
    else:
        assert ai.invalid_tool_calls[0]["name"] == name
        assert "did you mean 'segment'" in ai.invalid_tool_calls[0]["error"].lower()


def test_scripted_decode_flows_through_the_chat_model(tiny_models, monkeypatch):
    def scripted(self, loaded, prompt, stop, temperature=0.0):
        assert prompt.endswith("<|im_start|>assistant\n")
        return HERMES, 10, 5

    monkeypatch.setattr(HFChatModel, "_complete", scripted)
    ai = HFChatModel(model_id=str(tiny_models["tools"])).bind_tools(TOOLS).invoke(QUESTION)
    assert ai.tool_calls[0]["args"] == {"image_id": "img1"}
    assert ai.usage_metadata["total_tokens"] == 15
    unbound = HFChatModel(model_id=str(tiny_models["tools"])).invoke(QUESTION)
    assert unbound.tool_calls == []  # no tools offered: the text is an answer


# --- errors and sources -------------------------------------------------------------------


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(HFModelError, match="no model folder at") as err:
        HFChatModel(model_id=str(missing)).invoke("hi")
    assert str(missing) in str(err.value)


def test_unknown_hub_id_offline_names_it():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(HFModelError, match="medloop-test/definitely-not-a-model") as err:
        HFChatModel(model_id="medloop-test/definitely-not-a-model").invoke("hi")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_gguf_path_means_its_folder_and_file(tmp_path):
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"")
    assert _source(str(gguf), None) == (str(tmp_path), "model.Q4.gguf")
    assert _source(str(tmp_path), "x.gguf") == (str(tmp_path), "x.gguf")
    assert _source("Qwen/Qwen2.5-0.5B-Instruct", None) == ("Qwen/Qwen2.5-0.5B-Instruct", None)


def test_temperature_is_a_setting_and_loads_nothing():
    model = make_chat_model("hf:some-org/some-model", temperature=0.4)
    assert isinstance(model, HFChatModel) and model.temperature == 0.4
    assert HFChatModel(model_id="x").temperature == 0.0
