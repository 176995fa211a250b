"""The text protocol of the backends whose models read and write only text.

Three backends talk to such models: the embedded SmolLM2 (its reply constrained by a grammar,
``agent.llm.embedded``), ``openai-json:`` servers (``agent.llm.json_tools``), and transformers
models whose chat template knows no tools (``agent.llm.hf``). They share one protocol, defined
here once:

- tools arrive through ``bind_tools`` as anything LangChain can convert, and travel to
  ``_generate`` as OpenAI-format dicts (``TextToolCalling``);
- the prompt describes them one per line (``describe_tools``) inside ``prompts/tools_json``
  (``tools_system_prompt``), which asks for ``{"tool": NAME, "arguments": {...}}``;
- earlier calls are written back in that same JSON (``calls_json``), contents are read as text
  (``message_text``), and a conversation's tool calls and results become plain turns
  (``text_history``), because a text-only model or server may reject the structured forms;
- the reply comes back as an ``AIMessage`` carrying ``tool_calls`` / ``invalid_tool_calls``
  (``reply_with_tool_calls``, through the parser and repairer in ``agent.llm.toolcalls``).

A backend that speaks it says so with ``returns_parsed_tool_calls``: the graph's *think* node
then takes its replies as they are and never parses text itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.llm.toolcalls import parse_tool_calls
from prompts import load_prompt

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.runnables import Runnable

__all__ = [
    "TextToolCalling",
    "ToolLike",
    "calls_json",
    "chat_role",
    "describe_tools",
    "inline_refs",
    "message_text",
    "openai_tools",
    "parameters_of",
    "reply_with_tool_calls",
    "text_history",
    "tool_name",
    "tools_system_prompt",
]

ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool


# --- binding --------------------------------------------------------------------------------


def openai_tools(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """Tools (OpenAI dicts, BaseTools, pydantic models, functions) as OpenAI-format dicts."""
    return [convert_to_openai_tool(t) for t in tools]


class TextToolCalling:
    """``bind_tools`` for a ``BaseChatModel`` that speaks this protocol (mix in before it).

    The tools travel to ``_generate`` as the ``tools`` keyword, in OpenAI format. A backend
    that can enforce a choice (the embedded grammar) sets ``honours_tool_choice`` and gets
    ``tool_choice`` too; a text model can only be asked, not forced, so the others drop it and
    the graph checks what the model chose.
    """

    honours_tool_choice: ClassVar[bool] = False
    returns_parsed_tool_calls: ClassVar[bool] = True
    """Replies carry their calls as ``tool_calls`` / ``invalid_tool_calls`` already."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind ``tools``; replies then call them (``tool_choice`` as the class allows)."""
        if tool_choice is not None and self.honours_tool_choice:
            kwargs["tool_choice"] = tool_choice
        model = cast("BaseChatModel", self)
        return cast("Runnable[LanguageModelInput, AIMessage]",
                    model.bind(tools=openai_tools(tools), **kwargs))


# --- tool schemas ---------------------------------------------------------------------------


def tool_name(tool: Mapping[str, Any]) -> str:
    """The name of an OpenAI-format (or flat ``{"name", "parameters"}``) tool dict."""
    fn = tool.get("function")
    return str((fn if isinstance(fn, Mapping) else tool).get("name"))


def parameters_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A tool dict's JSON-schema parameters (an empty object schema when it has none)."""
    fn = tool.get("function")
    params = (fn if isinstance(fn, Mapping) else tool).get("parameters")
    return dict(params) if isinstance(params, Mapping) and params else {
        "type": "object", "properties": {}}


def inline_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with each local ``$ref`` replaced by the definition it names.

    Pydantic writes nested models as ``{"$ref": "#/$defs/Box"}`` beside a ``$defs`` table;
    neither a prompt line nor a grammar can follow a reference, so both read the inlined form.
    Keys beside a ``$ref`` (pydantic puts a field's description there) win over the
    definition's; the ``$defs`` / ``definitions`` tables are dropped; a recursive or dangling
    reference becomes ``{"type": "object"}`` (any object).
    """
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return cast("dict[str, Any]", _inline(dict(schema), defs, ()))


def _inline(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
        name = ref.rsplit("/", 1)[-1]
        target = defs.get(name)
        if name in seen or not isinstance(target, dict):
            return {"type": "object"}
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs, (*seen, name))
    return {k: _inline(v, defs, seen) for k, v in node.items()
            if k not in ("$defs", "definitions")}


# --- describing tools in the prompt ---------------------------------------------------------


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], *, constrained: bool = False) -> str:
    """The ``tools_json`` prompt filled with one line per tool (``describe_tools``)."""
    return load_prompt("tools_json").render(tools=describe_tools(tools, constrained=constrained))


def describe_tools(tools: Sequence[Mapping[str, Any]], *, constrained: bool = False) -> str:
    """One line per tool, ``- name(arguments): description``.

    Two readers, two forms. A model whose reply is free text (``constrained=False``) reads
    every enumerated value (the offered image and evidence ids are enums) and each argument's
    description, since nothing else keeps it to the ids that exist. A model constrained by a
    grammar built from the same schemas (the embedded planner, ``constrained=True``) reads a
    shorter line: the grammar allows only existing ids, so the line says where to find them
    instead of listing them (the list changes every round, and anything that changes in the
    system text invalidates the cached prompt after it), and a 135M model picks tools by name
    and first words, so the description is cut to its first sentence. Both forms were fixed by
    measurement; tests pin them.
    """
    line = _constrained_line if constrained else _free_line
    return "\n".join(line(tool) for tool in tools)


_MAX_ENUM_SHOWN = 12  # enum values listed per parameter before "…"
_MAX_DESCRIPTION = 240  # characters of a parameter description kept in the one-line summary


def _free_line(tool: Mapping[str, Any]) -> str:
    """``- name(arg: type, opt?: type): description — arg: what it is``."""
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
    return line


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


# Arguments whose allowed values ``agent.planner.offer`` writes in as enums of what exists now
# (image ids, mask keys, evidence ids). The constrained line says where to find them instead.
_LISTED_ELSEWHERE = {
    "image_id": 'an image id from "Images"',
    "mask_key": "a mask key a tool result gave",
    "evidence_ids": '[ids from "Evidence so far", e.g. "E1", ...]',
}


def _constrained_line(tool: Mapping[str, Any]) -> str:
    """``- name(arg: type, opt?: type (what it is)): first sentence of the description``."""
    fn = tool["function"]
    params = inline_refs(parameters_of(tool))
    return f"- {fn['name']}({_signature(params)}): {_first_sentence(fn.get('description', ''))}"


def _type_hint(schema: dict[str, Any]) -> str:
    """A short, readable type for one argument: what a small model needs to fill it."""
    if "enum" in schema:
        values = [json.dumps(v) for v in schema["enum"][:6]]
        more = ", ..." if len(schema["enum"]) > 6 else ""
        return "one of " + ", ".join(values) + more
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), dict):
        n = schema.get("minItems")
        count = f" x{n}" if n is not None and n == schema.get("maxItems") else ", ..."
        return f"[{_type_hint(schema['items'])}{count}]"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "{" + _signature(schema) + "}"
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return f"{kind} {lo:g} to {hi:g}" if lo is not None and hi is not None else str(kind)
    if kind == "string":
        return "text"
    if "anyOf" in schema:
        return " or ".join(_type_hint(s) for s in schema["anyOf"] if s.get("type") != "null")
    return str(kind or "value")


def _has_enum(schema: dict[str, Any]) -> bool:
    items = schema.get("items")
    return "enum" in schema or (isinstance(items, dict) and "enum" in items)


def _signature(params: dict[str, Any]) -> str:
    """``name: type, other?: type (what it is)`` for an object schema; ``?`` marks optional.

    Descriptions are kept only for arrays and numbers, whose meaning (``[x0, y0, x1, y1]``,
    units) the type alone does not say; the rest would only lengthen the prompt.
    """
    required = set(params.get("required", []))
    parts = []
    for name, s in params.get("properties", {}).items():
        hint = _LISTED_ELSEWHERE.get(name) if _has_enum(s) else None
        if hint is not None:
            parts.append(f"{name}{'' if name in required else '?'}: {hint}")
            continue
        hint = _type_hint(s)
        desc = " ".join(str(s.get("description", "")).split())
        if desc and s.get("type") in ("array", "number", "integer") and "enum" not in s:
            hint += f" ({desc[:100]})"
        parts.append(f"{name}{'' if name in required else '?'}: {hint}")
    return ", ".join(parts)


def _first_sentence(description: str, limit: int = 100) -> str:
    """A tool's description cut to its first sentence or ``limit`` characters, at a word.

    Every token of the embedded prompt costs ~3 ms on two cores, and a 135M model picks tools
    by name and first words, not by the fine print.
    """
    text = " ".join(str(description).split())
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " ..."


# --- messages as text -----------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a list, joined."""
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
    return "" if content is None else str(content)


def calls_json(calls: Sequence[Mapping[str, Any]]) -> str:
    """Tool calls as the JSON the model is asked to write: one object, or a list of them."""
    items = [{"tool": c.get("name"), "arguments": c.get("args") or {}} for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def chat_role(m: BaseMessage) -> str:
    """The chat-template role of a message: system, assistant, tool, user (or its own)."""
    if isinstance(m, SystemMessage):
        return "system"
    if isinstance(m, AIMessage):
        return "assistant"
    if isinstance(m, ToolMessage):
        return "tool"
    if isinstance(m, ChatMessage):
        return m.role
    return "user"


def text_history(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The conversation with tool calls and tool results written as plain text.

    An ``AIMessage``'s calls become the JSON the model is asked to write (unless its text
    already holds them, as it does when a text backend produced it); consecutive
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
                text = f"{text}\n{calls_json(m.tool_calls)}".strip()
            out.append(AIMessage(content=text))
        elif isinstance(m, AIMessage) and (m.invalid_tool_calls or not isinstance(m.content, str)):
            out.append(AIMessage(content=message_text(m.content)))
        else:
            out.append(m)
    flush()
    return out


# --- the reply ------------------------------------------------------------------------------


def reply_with_tool_calls(reply: BaseMessage, tools: Sequence[Mapping[str, Any]]) -> AIMessage:
    """The reply as an ``AIMessage`` carrying the calls it made.

    Calls it already carries (native tool calling, or a backend that parsed them) are kept;
    otherwise the ones written in its text are parsed and repaired (``agent.llm.toolcalls``),
    and what cannot be used becomes ``invalid_tool_calls`` for the model to fix. The content
    is kept as written, so the trace shows what the model actually said. With no tools offered
    nothing is parsed: the reply is an answer.
    """
    ai = reply if isinstance(reply, AIMessage) else AIMessage(content=reply.content, id=reply.id)
    if not tools or ai.tool_calls or ai.invalid_tool_calls:
        return ai
    parsed = parse_tool_calls(message_text(ai.content), tools)
    if not parsed.calls and not parsed.invalid:
        return ai
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
