"""A local transformers chat model as the planner (``hf:ID_OR_PATH``), on the GPU when present.

The model's own chat template formats the conversation. Templates that know about tools
(Qwen2.5/Qwen3, Llama 3.1+, Hermes, Mistral) get the OpenAI tool dicts through
``apply_chat_template(tools=...)`` and the conversation's tool calls and results in their native
form; the model then writes calls in the format it was trained on (``<tool_call>{...}</tool_call>``
for Qwen/Hermes, bare JSON for Llama) and ``agent.llm.toolcalls`` reads any of them. Templates
without tools get the same prompt-based protocol as ``openai-json:`` (``agent.llm.json_tools``).
Either way the reply is read by the shared text protocol (``agent.llm.text_protocol``).

Decoding is greedy unless a temperature is set: the planner's choices should not change
between runs of the same question.
Weights load on first use (not at construction), once per process for each (model, device),
behind a lock; generation on one model is serialised, since concurrent ``generate`` calls on one
model only compete for the same device.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from agent.llm.json_tools import with_tools_prompt
from agent.llm.text_protocol import (
    TextToolCalling,
    chat_role,
    message_text,
    reply_with_tool_calls,
    text_history,
)
from tools.errors import MedloopError
from tools.models.registry import resolve_device

__all__ = [
    "HFChatModel",
    "HFModelError",
    "clear_model_cache",
    "decode_reply",
    "message_from_output",
    "render_prompt",
    "template_supports_tools",
]

# Special tokens that carry meaning for the parser and stay in the decoded text even where a
# tokenizer marks them special.
_KEEP_TOKENS = frozenset({"<tool_call>", "</tool_call>", "<think>", "</think>"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFModelError(MedloopError, RuntimeError):
    """A transformers model could not be loaded or prompted; the message names it."""


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)


_MODELS: dict[tuple[str, str | None, str], _Loaded] = {}
_LOAD_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded model (tests, or to free the memory)."""
    with _LOAD_LOCK:
        _MODELS.clear()


class HFChatModel(TextToolCalling, BaseChatModel):
    """A causal LM from transformers as a tool-calling chat model.

    Attributes:
        model_id: a Hugging Face hub id (``Qwen/Qwen2.5-7B-Instruct``) or a local folder; a
            path to a ``.gguf`` file also works (its folder and file name are used).
        device: ``cuda``, ``cpu``, ``cuda:1``...; None or ``auto`` picks CUDA when available.
        max_new_tokens: the reply's length limit, in tokens. A call cut off by it is closed by
            the JSON repair where possible.
        gguf_file: load weights from this GGUF file inside ``model_id`` (dequantised by
            transformers: slow and fp32, but needs no other runtime).
        temperature: 0 (the default) decodes greedily; above 0 samples. A ``temperature``
            keyword on one call overrides it.
    """

    model_id: str
    device: str | None = None
    max_new_tokens: int = 384
    gguf_file: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)

    @property
    def _llm_type(self) -> str:
        return "hf-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "gguf_file": self.gguf_file,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    def load(self) -> tuple[Any, Any]:
        """``(tokenizer, model)``, loading them on first use. Raises ``HFModelError``."""
        loaded = _load(self.model_id, self.gguf_file, resolve_device(self.device or "auto"))
        return loaded.tokenizer, loaded.model

    def render_prompt(
        self, messages: Sequence[BaseMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """The exact text the model reads for ``messages`` with ``tools`` offered."""
        tokenizer, _ = self.load()
        return render_prompt(tokenizer, messages, tools or [])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = list(kwargs.get("tools") or [])
        temperature = float(kwargs.get("temperature", self.temperature))
        if not 0.0 <= temperature <= 2.0:
            raise HFModelError(f"temperature must be from 0 to 2, got {temperature:g}")
        loaded = _load(self.model_id, self.gguf_file, resolve_device(self.device or "auto"))
        prompt = render_prompt(loaded.tokenizer, messages, tools)
        text, n_in, n_out = self._complete(loaded, prompt, stop, temperature)
        ai = message_from_output(text, tools)
        ai.usage_metadata = {"input_tokens": n_in, "output_tokens": n_out,
                             "total_tokens": n_in + n_out}
        ai.response_metadata = {"model_name": self.model_id, "device": loaded.device}
        return ChatResult(generations=[ChatGeneration(message=ai)])

    def _complete(
        self, loaded: _Loaded, prompt: str, stop: list[str] | None, temperature: float = 0.0
    ) -> tuple[str, int, int]:
        """Continuation of ``prompt``: ``(text, prompt tokens, new tokens)``.

        Greedy unless a ``temperature`` above 0 is passed (``llm.invoke(msgs,
        temperature=0.7)``: the agent samples extra answers that way). The text keeps the
        tool-call tags but not the other special tokens (end of turn, padding), and is cut at
        the first ``stop`` string.
        """
        import torch

        tok, model = loaded.tokenizer, loaded.model
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False,
                                   "pad_token_id": pad}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        if stop:
            options.update(stop_strings=list(stop), tokenizer=tok)
        with loaded.lock, torch.inference_mode():
            output = model.generate(**inputs, **options)
        n_in = int(inputs["input_ids"].shape[1])
        new = output[0, n_in:]  # (new tokens,)
        text = decode_reply(tok, new)
        for s in stop or []:
            text = text.split(s, 1)[0]
        return text.strip(), n_in, int(new.shape[0])


def message_from_output(text: str, tools: Sequence[Mapping[str, Any]]) -> AIMessage:
    """The ``AIMessage`` for a decoded reply: its text, and the tool calls written in it."""
    return reply_with_tool_calls(AIMessage(content=text), tools)


def decode_reply(tokenizer: Any, token_ids: Any) -> str:
    """The generated tokens as text, tool-call and reasoning tags kept, other specials dropped.

    ``skip_special_tokens=True`` is not enough: some tokenizers mark ``<tool_call>`` special,
    and dropping it would lose where a call starts.
    """
    text = str(tokenizer.decode(token_ids, skip_special_tokens=False))
    for token in getattr(tokenizer, "all_special_tokens", []) or []:
        if token and token not in _KEEP_TOKENS:
            text = text.replace(token, "")
    return text.strip()


# --- prompt ---------------------------------------------------------------------------------


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list."""
    template = getattr(tokenizer, "chat_template", None)
    templates = template.values() if isinstance(template, dict) else [template]
    return any(isinstance(t, str) and re.search(r"\btools\b", t) for t in templates)


def render_prompt(
    tokenizer: Any, messages: Sequence[BaseMessage], tools: Sequence[Mapping[str, Any]]
) -> str:
    """The chat-templated prompt, with tools native to the template or in the system prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise HFModelError(
            f"{getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat template; "
            f"the planner needs an instruction-tuned chat model"
        )
    native = template_supports_tools(tokenizer)
    if native:
        conversation = _native_dicts(messages)
    else:
        history = text_history(messages)
        conversation = _text_dicts(with_tools_prompt(history, tools) if tools else history)
    from jinja2 import TemplateError

    kwargs: dict[str, Any] = {"tools": list(tools) or None} if native else {}
    try:
        return str(tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False, **kwargs))
    except TemplateError as exc:
        # Some templates (Gemma's, for one) refuse a system turn: fold it into the first user turn.
        if not conversation or conversation[0]["role"] != "system":
            raise HFModelError(f"the model's chat template failed: {exc}") from exc
        folded = _fold_system(conversation)
        try:
            return str(tokenizer.apply_chat_template(
                folded, add_generation_prompt=True, tokenize=False, **kwargs))
        except TemplateError as exc2:
            raise HFModelError(f"the model's chat template failed: {exc2}") from exc2


def _fold_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system, rest = conversation[0], conversation[1:]
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system["content"]}, *rest]


def _text_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    return [{"role": chat_role(m), "content": message_text(m.content)} for m in messages]


def _native_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Messages in the form tool-aware templates read (arguments as dicts, as Qwen's wants)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": chat_role(m), "content": message_text(m.content)}
        if isinstance(m, AIMessage) and m.tool_calls:
            entry["tool_calls"] = [
                {"id": c.get("id"), "type": "function",
                 "function": {"name": c["name"], "arguments": c.get("args") or {}}}
                for c in m.tool_calls
            ]
        elif isinstance(m, ToolMessage):
            entry["tool_call_id"] = m.tool_call_id
            if m.name:
                entry["name"] = m.name
        out.append(entry)
    return out


# --- loading --------------------------------------------------------------------------------


def _source(model_id: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Where ``from_pretrained`` should look: a local folder (+ GGUF file) or a hub id."""
    path = Path(model_id).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), gguf_file or path.name
    if path.is_dir():
        return str(path), gguf_file
    if not _HUB_ID.match(model_id):
        raise HFModelError(f"no model folder at {str(path)!r} (hf:{model_id})")
    return model_id, gguf_file


def _load(model_id: str, gguf_file: str | None, device: str) -> _Loaded:
    key = (model_id, gguf_file, device)
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load_uncached(model_id, gguf_file, device)
        return _MODELS[key]


def _load_uncached(model_id: str, gguf_file: str | None, device: str) -> _Loaded:
    source, gguf = _source(model_id, gguf_file)
    try:  # transformers' model classes import torchvision, broken with the CPU torch wheel
        from tools.torch_compat import ensure_torchvision

        ensure_torchvision()
    except ImportError:
        pass  # no compat module, or no torchvision at all: transformers copes without it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        where = ("not a local folder, and not in the local Hugging Face cache (HF_HUB_OFFLINE "
                 "is set, so nothing is downloaded)") if offline else "see the cause below"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"cannot load transformers model {model_id!r}: {where}. {first}"
        raise HFModelError(message) from exc
    model.to(device)
    model.eval()
    return _Loaded(tokenizer=tokenizer, model=model, device=device)
