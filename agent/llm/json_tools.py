"""Tool calling for chat models that have none: tools in the prompt, calls parsed from JSON.

``JsonToolsChatModel`` wraps any text-only ``BaseChatModel`` (an ``openai-json:`` server, a
local model whose chat template knows no tools) and gives it the same contract as a native
tool-calling backend, through the shared text protocol (``agent.llm.text_protocol``):
``bind_tools`` takes OpenAI-format tools, the tools are described one per line in the system
prompt, earlier tool calls and results are rewritten as plain text (a text-only model or server
may reject or silently drop the structured forms), and replies are ``AIMessage``s carrying
``tool_calls`` / ``invalid_tool_calls``. Malformed output becomes invalid calls for the graph
to send back, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig

from agent.llm.text_protocol import (
    TextToolCalling,
    message_text,
    reply_with_tool_calls,
    text_history,
    tools_system_prompt,
)

__all__ = ["JsonToolsChatModel", "with_tools_prompt"]

# Keyword arguments that only make sense to a native tool-calling API; never forwarded.
_TOOL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")


class JsonToolsChatModel(TextToolCalling, BaseChatModel):
    """Adds prompt-based tool calling to ``inner``, a chat model that only writes text."""

    inner: BaseChatModel

    @property
    def _llm_type(self) -> str:
        return f"json-tools({self.inner._llm_type})"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"inner": self.inner._identifying_params}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, rest = _split_kwargs(kwargs)
        reply = self.inner.invoke(_prepare(messages, tools), _inner_config(), stop=stop, **rest)
        return _result(reply, tools)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools, rest = _split_kwargs(kwargs)
        prepared = _prepare(messages, tools)
        reply = await self.inner.ainvoke(prepared, _inner_config(), stop=stop, **rest)
        return _result(reply, tools)


def _inner_config() -> RunnableConfig:
    """Run the inner model without callbacks.

    This wrapper's own run reports the reply, with its parsed calls, to the callbacks. Were the
    inner run reported too, a LangGraph ``messages`` stream would carry every reply twice, once
    as raw text without its calls.
    """
    return {"callbacks": []}


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tools = list(kwargs.get("tools") or [])
    return tools, {k: v for k, v in kwargs.items() if k not in _TOOL_KWARGS}


def _prepare(
    messages: Sequence[BaseMessage], tools: Sequence[Mapping[str, Any]]
) -> list[BaseMessage]:
    history = text_history(messages)
    return with_tools_prompt(history, tools) if tools else history


def _result(reply: BaseMessage, tools: Sequence[Mapping[str, Any]]) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=reply_with_tool_calls(reply, tools))])


def with_tools_prompt(
    messages: Sequence[BaseMessage], tools: Sequence[Mapping[str, Any]]
) -> list[BaseMessage]:
    """``messages`` with the tool instructions appended to the system message (made if none)."""
    block = tools_system_prompt(tools)
    out = list(messages)
    if out and isinstance(out[0], SystemMessage):
        out[0] = SystemMessage(content=f"{message_text(out[0].content).rstrip()}\n\n{block}")
    else:
        out.insert(0, SystemMessage(content=block))
    return out
