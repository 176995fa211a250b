"""Chat models served over the OpenAI API: vLLM, Ollama, llama.cpp's server, OpenAI itself.

``openai:MODEL@URL`` uses the server's native tool calling (vLLM needs
``--enable-auto-tool-choice --tool-call-parser ...`` for that). ``openai-json:MODEL@URL`` is for
servers without it: the tools go into the prompt and the calls are read from the reply's JSON
(``JsonToolsChatModel``). A native server that still answers with JSON text instead of
``tool_calls`` (a model its tool-call parser does not know) is recovered here, with the same
text protocol (``agent.llm.text_protocol``), so every backend's replies carry their calls.

The client's own errors ("Connection error.") do not say which server or what to try next;
this module re-raises them as ``OpenAIServerError`` naming the URL, the model and the likely
fix, so the CLI and app can show one useful line.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from agent.llm.json_tools import JsonToolsChatModel
from agent.llm.spec import LLMSpec
from agent.llm.text_protocol import reply_with_tool_calls
from tools.errors import MedloopError

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_TIMEOUT_S", "OpenAIServerError", "make_openai_model"]

DEFAULT_TIMEOUT_S = 120.0  # one planner reply; long enough for a large model on a busy server
# A planner reply is a tool call or a short cited answer. Without a bound, a small model that
# fails to stop rambles until the server's context is full and the call times out (measured
# with SmolLM2-135M behind llama.cpp's server: > 120 s for one reply on 2 cores).
DEFAULT_MAX_TOKENS = 1024


class OpenAIServerError(MedloopError, RuntimeError):
    """The OpenAI-compatible server could not be used; the message names it and what to try."""


def make_openai_model(
    spec: LLMSpec,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
) -> BaseChatModel:
    """The chat model for an ``openai``/``openai-json`` spec.

    The key comes from ``OPENAI_API_KEY``; local servers ignore it, so a placeholder is sent
    when it is unset. Temperature 0 (the default) keeps tool choices reproducible; one retry
    absorbs a dropped connection without making a dead server slow to report. ``max_tokens``
    bounds one reply.
    """
    if spec.kind != "openai" or not spec.base_url:
        raise ValueError(f"not an OpenAI-compatible spec: {spec}")
    chat = _ChatOpenAI(
        model=spec.model,
        base_url=spec.base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",  # type: ignore[arg-type]
        temperature=temperature,
        timeout=timeout_s,
        max_retries=1,
        max_completion_tokens=max_tokens,  # the field's alias; sent as max_tokens to local servers
        # A streamed reply is passed on chunk by chunk, before the whole of it could be read
        # for calls written as text; a planner's tool-calling reply gains nothing from it.
        disable_streaming="tool_calling",
    )
    if spec.native_tools:
        return chat
    return JsonToolsChatModel(inner=chat)


class _ChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` whose connection and request errors name the server and a fix.

    It also sends the reply bound as ``max_tokens`` to servers other than OpenAI's own:
    ``ChatOpenAI`` renames it ``max_completion_tokens`` (OpenAI's newer name), which
    llama.cpp's server ignores, so the bound would silently not apply there. And when tools
    are bound but the reply has no ``tool_calls``, the calls written in its text are read
    (``reply_with_tool_calls``), so its replies carry their calls like every backend's.
    """

    returns_parsed_tool_calls: ClassVar[bool] = True

    def _get_request_payload(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(*args, **kwargs)
        if "max_completion_tokens" in payload and not _is_openai(self.openai_api_base):
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._named_errors():
            result = super()._generate(*args, **kwargs)
        return _with_text_calls(result, kwargs.get("tools"))

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._named_errors():
            result = await super()._agenerate(*args, **kwargs)
        return _with_text_calls(result, kwargs.get("tools"))

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        with self._named_errors():
            yield from super()._stream(*args, **kwargs)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        with self._named_errors():
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        try:
            yield
        except openai.APIError as exc:
            message = _explain(exc, self.openai_api_base or "", self.model_name)
            if message is None:
                raise
            raise OpenAIServerError(message) from exc


def _with_text_calls(result: ChatResult, tools: Sequence[Mapping[str, Any]] | None) -> ChatResult:
    """``result`` with calls written as text read into ``tool_calls`` (native ones kept)."""
    if not tools:
        return result
    generations = [
        ChatGeneration(message=reply_with_tool_calls(g.message, tools),
                       generation_info=g.generation_info)
        for g in result.generations
    ]
    return ChatResult(generations=generations, llm_output=result.llm_output)


def _is_openai(url: str | None) -> bool:
    """Whether ``url`` is OpenAI's own API (which wants ``max_completion_tokens``)."""
    return url is None or "api.openai.com" in url


def _explain(exc: openai.APIError, url: str, model: str) -> str | None:
    """One line saying what went wrong and what to try, or None to let ``exc`` through."""
    where = f"the OpenAI-compatible server at {url} (model {model!r})"
    detail = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, openai.APITimeoutError):
        return f"{where} did not answer in time; is it overloaded, or is the timeout too short?"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach {where}: {detail} Is the server running and the URL right?"
    if isinstance(exc, openai.NotFoundError):
        return (f"{where} answered 404 ({detail}); check the model name and that the base URL "
                f"ends where the API starts (usually /v1)")
    if isinstance(exc, openai.AuthenticationError):
        return f"{where} rejected the API key ({detail}); set OPENAI_API_KEY"
    if isinstance(exc, openai.BadRequestError) and "tool" in detail.lower():
        return (f"{where} refused the tool-calling request ({detail}). If the server has no "
                f"tool-call parser, use 'openai-json:{model}@{url}' instead")
    return None
