"""Tool calling for chat models that have none: tools in the prompt, calls parsed from JSON.

``JsonToolsChatModel`` wraps any text-only ``BaseChatModel`` (an ``openai-json:`` server, a
local model whose chat template knows no tools) and gives it the same contract as a native
tool-calling backend: ``bind_tools`` takes OpenAI-format tools, and replies are ``AIMessage``s
carrying ``tool_calls`` / ``invalid_tool_calls``. The tools are described one per line in the
system prompt (``prompts/tools_json``), and earlier tool calls and results in the history are
rewritten as plain text, because a text-only model or server may reject or silently drop the
structured forms. The reply's text is parsed and repaired by ``agent.llm.toolcalls``; malformed
output becomes invalid calls for the graph to send back, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.llm.toolcalls import parse_tool_calls
from prompts import load_prompt

__all__ = [
    "JsonToolsChatModel",
    "describe_tools",
    "message_text",
    "reply_with_tool_calls",
    "text_history",
    "tools_system_prompt",
    "with_tools_prompt",
]

_MAX_ENUM_SHOWN = 12  # enum values listed per parameter before "…"
_MAX_DESCRIPTION = 240  # characters of a parameter description kept in the one-line summary
# Keyword arguments that only make sense to a native tool-calling API; never forwarded.
_TOOL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")

ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool


class JsonToolsChatModel(BaseChatModel):
    """Adds prompt-based tool calling to ``inner``, a chat model that only writes text."""

    inner: BaseChatModel

    @property
    def _llm_type(self) -> str:
        return f"json-tools({self.inner._llm_type})"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"inner": self.inner._identifying_params}

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (converted to OpenAI format); they travel to ``_generate`` as ``tools``.

        ``tool_choice`` is accepted for interface compatibility and ignored: a text model can
        only be asked, not forced, and the graph checks what it chose.
        """
        del tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

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
    message = reply_with_tool_calls(reply, tools) if tools else _as_ai(reply)
    return ChatResult(generations=[ChatGeneration(message=message)])


def _as_ai(reply: BaseMessage) -> AIMessage:
    if isinstance(reply, AIMessage):
        return reply
    return AIMessage(content=reply.content, id=reply.id)


def reply_with_tool_calls(reply: BaseMessage, tools: Sequence[Mapping[str, Any]]) -> AIMessage:
    """The reply as an ``AIMessage`` whose tool calls are those its text asked for.

    The content is kept as written, so the trace shows what the model actually said.
    """
    ai = _as_ai(reply)
    parsed = parse_tool_calls(message_text(ai.content), tools)
    meta = dict(ai.response_metadata or {})
    if parsed.repaired:
        meta["tool_calls_repaired"] = True
    return AIMessage(
        content=ai.content,
        tool_calls=parsed.calls,
        invalid_tool_calls=parsed.invalid,
        id=ai.id,
        response_metadata=meta,
        usage_metadata=ai.usage_metadata,
    )


# --- the prompt ----------------------------------------------------------------------------


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``tools_json`` prompt filled with one line per tool."""
    return load_prompt("tools_json").render(tools=describe_tools(tools))


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


def describe_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """One line per tool: ``name(arg: type, opt?: type): description — arg: what it is``.

    Enumerated values are written out (the offered image and evidence ids are enums), so a
    model without a schema-constrained decoder still sees exactly which ids exist.
    """
    lines = []
    for tool in tools:
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            fn = tool
        params = fn.get("parameters")
        if not isinstance(params, Mapping):
            params = {}
        props = params.get("properties") or {}
        required = set(params.get("required") or [])
        sig = ", ".join(
            f"{key}{'' if key in required else '?'}: {_type_text(spec)}"
            for key, spec in props.items()
        )
        line = f"- {fn.get('name')}({sig}): {_one_line(str(fn.get('description') or ''))}"
        notes = [
            f"{key}: {_one_line(str(spec['description']))[:_MAX_DESCRIPTION]}"
            for key, spec in props.items()
            if isinstance(spec, Mapping) and spec.get("description")
        ]
        if notes:
            line += " — " + "; ".join(notes)
        lines.append(line)
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _type_text(schema: Any, depth: int = 0) -> str:
    """A compact type: ``string``, ``"img1"|"img2"``, ``list of number``, ``{a: string}``."""
    if not isinstance(schema, Mapping):
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        values = [json.dumps(v) for v in schema["enum"][:_MAX_ENUM_SHOWN]]
        more = "|…" if len(schema["enum"]) > _MAX_ENUM_SHOWN else ""
        return "|".join(values) + more
    if "const" in schema:
        return json.dumps(schema["const"])
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list):
        kinds = [_type_text(b, depth) for b in branches if not _is_null(b)]
        return "|".join(dict.fromkeys(kinds)) or "null"
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type_text(schema.get('items'), depth + 1)}"
    if (kind == "object" or "properties" in schema) and schema.get("properties") and depth < 2:
        required = set(schema.get("required") or [])
        inner = ", ".join(
            f"{k}{'' if k in required else '?'}: {_type_text(v, depth + 1)}"
            for k, v in schema["properties"].items()
        )
        return "{" + inner + "}"
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind if k != "null")
    return str(kind or "any")


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


# --- the history as text -------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a message's content (a string, or a list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return str(content)


def _calls_as_json(calls: Sequence[Mapping[str, Any]]) -> str:
    items = [{"tool": c.get("name"), "arguments": c.get("args") or {}} for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def text_history(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The conversation with tool calls and tool results written as plain text.

    An ``AIMessage``'s calls become the JSON the model is asked to write (unless its text
    already holds them, as it does when this wrapper produced it); consecutive
    ``ToolMessage``s become one user message, since many chat templates require user and
    assistant turns to alternate.
    """
    out: list[BaseMessage] = []
    results: list[str] = []

    def flush() -> None:
        if results:
            out.append(HumanMessage(content="\n\n".join(results)))
            results.clear()

    for m in messages:
        if isinstance(m, ToolMessage):
            label = m.name or m.tool_call_id
            results.append(f"Result of {label}:\n{message_text(m.content)}")
            continue
        flush()
        if isinstance(m, AIMessage) and m.tool_calls:
            text = message_text(m.content).strip()
            if not all(c["name"] in text for c in m.tool_calls):
                text = f"{text}\n{_calls_as_json(m.tool_calls)}".strip()
            out.append(AIMessage(content=text))
        elif isinstance(m, AIMessage) and (m.invalid_tool_calls or not isinstance(m.content, str)):
            out.append(AIMessage(content=message_text(m.content)))
        else:
            out.append(m)
    flush()
    return out
