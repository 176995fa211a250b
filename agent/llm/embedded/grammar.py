"""Tool schemas → one JSON schema → a llama.cpp grammar, and the constrained reply read back.

A 135M model has no native tool calling and writes valid JSON from free text almost never. So
when tools are bound, its output is *constrained* by a llama.cpp grammar built from one
JSON-schema branch per tool (``{"tool": <const name>, "arguments": <that tool's parameters>}``).
The reply is then always a parseable call to an offered tool with arguments of the right shape,
and ids restricted by ``enum`` (image ids, evidence ids) can only be ones that exist.

The grammar is built here rather than by llama-cpp-python's ``response_format`` path, which
silently falls back to free-form JSON when the schema cannot be converted, ignores
``minimum``/``maximum``, and lets raw newlines into strings. Numbers get a short bounded grammar
(no exponent, few digits) and are clamped into range after parsing (``parse_tool_call``);
strings and arrays get length caps so a small model cannot run away inside a string until
``max_tokens`` cuts the JSON.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage

from agent.llm.embedded.errors import EmbeddedModelError
from agent.llm.text_protocol import inline_refs, parameters_of, tool_name

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "check_grammar",
    "parse_tool_call",
    "salvage_cut_call",
    "select_tools",
    "tool_call_grammar",
    "tool_call_schema",
]

# Schema keywords that only inform a reader; they do not change what JSON is valid.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id"})


def _prepare(node: Any, caps: tuple[int, int]) -> Any:
    """Drop annotations, and cap string lengths and array sizes (``$ref``s already inlined)."""
    if isinstance(node, list):
        return [_prepare(v, caps) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {p: _prepare(s, caps) for p, s in value.items()}
        else:
            out[key] = _prepare(value, caps)
    max_chars, max_items = caps
    kind = out.get("type")
    if kind == "string" and not {"enum", "const", "pattern", "format"} & out.keys():
        out["maxLength"] = min(int(out.get("maxLength", max_chars)), max_chars)
        out["minLength"] = min(int(out.get("minLength", 0)), out["maxLength"])
    elif kind == "array" and isinstance(out.get("items"), dict):
        lo = int(out.get("minItems", 0))
        items = out["items"]
        cap = len(items["enum"]) if isinstance(items.get("enum"), list) else max_items
        out["maxItems"] = max(lo, min(int(out.get("maxItems", cap)), cap))
    elif kind == "object" and "properties" not in out and "additionalProperties" not in out:
        out["properties"] = {}  # a tool without arguments: exactly {}
    return out


def tool_call_schema(
    tools: Sequence[dict[str, Any]], *, max_chars: int = 160, max_items: int = 3
) -> dict[str, Any]:
    """The JSON schema of one call to one of ``tools`` (OpenAI-format dicts).

    ``{"anyOf": [{"type": "object", "properties": {"tool": {"const": NAME},
    "arguments": PARAMETERS}, "required": ["tool", "arguments"]}, ...]}`` with ``$ref``s inlined,
    strings capped at ``max_chars`` characters and arrays at ``max_items`` items (or the number
    of ``enum`` values their items may take), so generation always ends well inside
    ``max_tokens``.
    """
    branches = [
        {
            "type": "object",
            "properties": {
                "tool": {"const": tool_name(tool)},
                "arguments": _prepare(inline_refs(parameters_of(tool)), (max_chars, max_items)),
            },
            "required": ["tool", "arguments"],
        }
        for tool in tools
    ]
    if not branches:
        raise ValueError("tool_call_schema needs at least one tool")
    return {"anyOf": branches}


def _bounded_number_rule(schema: dict[str, Any]) -> str:
    """GBNF for a JSON number the model can write in a few tokens.

    Integral digits are limited to what the bounds allow (9 when unbounded), the sign is only
    allowed when the minimum is negative, fractions to 3 digits, and no exponent. Exact bounds
    are not expressible digit-wise in general, so values are also clamped after parsing.
    """
    lo, hi = schema.get("minimum"), schema.get("maximum")
    integer = schema.get("type") == "integer"
    frac = "" if integer else ' ("." [0-9] [0-9]? [0-9]?)?'
    if lo is not None and hi is not None and lo >= 0 and hi <= 1 and not integer:
        return f'("0"{frac} | "1" ("." "0"? "0"? "0"?)?) space'
    sign = '"-"? ' if lo is None or lo < 0 else ""
    digits = 9  # one bound, or none, says nothing about the magnitude
    if lo is not None and hi is not None:
        digits = max(1, len(str(int(max(abs(lo), abs(hi))))))
    more = " ".join(["[0-9]?"] * (digits - 1))
    integral = f'("0" | [1-9] {more})' if more else "[0-9]"
    return f"{sign}{integral}{frac} space"


# One character inside a JSON string. llama-cpp-python's converter allows any byte but " and
# \ there, raw newlines and control characters included, which is not JSON (the model did write
# a raw newline and then kept going). Escapes are limited to \" \\ and \/: a planner's
# arguments need no \n, and without it the model cannot start a new paragraph either.
_STRING_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" ["\\/]'


@lru_cache(maxsize=256)
def _grammar_text(schema_json: str) -> str:
    """GBNF for a prepared schema (JSON text, so it can be the cache key)."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class _Converter(SchemaConverter):
        """llama.cpp's converter, with bounded numbers (it ignores minimum/maximum)."""

        def visit(self, schema: dict[str, Any], name: str) -> str:
            if (
                schema.get("type") in ("number", "integer")
                and not {"enum", "const", "anyOf", "oneOf", "$ref"} & schema.keys()
            ):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return str(self._add_rule(rule_name, _bounded_number_rule(schema)))
            return str(super().visit(schema, name))

    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(json.loads(schema_json), "")
    if "char" in converter._rules:
        converter._rules["char"] = _STRING_CHAR
    return str(converter.format_grammar())


def tool_call_grammar(schema: dict[str, Any]) -> str:
    """The llama.cpp GBNF grammar for ``schema`` (from ``tool_call_schema``)."""
    return _grammar_text(json.dumps(schema))  # key order matters: "tool" before "arguments"


_CHECKED_GRAMMARS: set[str] = set()


def check_grammar(llm: Llama, text: str) -> None:
    """Parse ``text`` with llama.cpp once; a grammar it rejects would crash the sampler.

    llama-cpp-python chains whatever ``llama_sampler_init_grammar`` returns, NULL included, so
    a grammar llama.cpp cannot parse would take the process down mid-generation instead of
    raising. Raises EmbeddedModelError instead.
    """
    if text in _CHECKED_GRAMMARS:
        return
    import llama_cpp.llama_cpp as low

    sampler = low.llama_sampler_init_grammar(
        llm._model.vocab, text.encode("utf-8"), b"root"
    )
    if not sampler:
        raise EmbeddedModelError("llama.cpp rejected the tool-call grammar built from the tools")
    low.llama_sampler_free(sampler)
    _CHECKED_GRAMMARS.add(text)


def select_tools(
    tools: Sequence[dict[str, Any]], tool_choice: str | dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The tools the grammar allows under ``tool_choice`` ("none" → no tools, a name → that one).

    "auto", "any" and "required" all allow every tool: a constrained reply always calls one.
    Raises ValueError when a named tool is not bound.
    """
    if tool_choice is None or tool_choice in ("auto", "any", "required"):
        return list(tools)
    if tool_choice == "none":
        return []
    name = tool_choice if isinstance(tool_choice, str) else (
        tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    )
    chosen = [t for t in tools if tool_name(t) == name]
    if not chosen:
        raise ValueError(f"tool_choice {name!r} is not one of the bound tools")
    return chosen


# --------------------------------------------------------------------------------------------
# The constrained reply read back; arguments kept inside the bounds the grammar could not state.


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


def parse_tool_call(
    raw: str, tools: Sequence[dict[str, Any]], finish_reason: str | None = None
) -> AIMessage:
    """The constrained reply as an ``AIMessage`` with one tool call, or an invalid tool call.

    Never raises for model output: text that does not parse or names no offered tool becomes
    ``invalid_tool_calls``, which the graph hands back to the model. A reply cut at
    ``max_tokens`` is first read for the whole call it began (``salvage_cut_call``).
    """
    by_name = {tool_name(t): t for t in tools}
    error: str
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        error = f"reply is not complete JSON{cut}: {exc.msg}"
        salvaged = salvage_cut_call(raw, by_name) if cut else None
        if salvaged is not None:
            return salvaged
    else:
        read = _call_of(obj, by_name)
        if read is not None:
            return read
        error = f"reply names no offered tool: expected one of {sorted(by_name)}"
    return AIMessage(
        content="",
        invalid_tool_calls=[{"name": None, "args": raw, "id": _new_call_id(), "error": error,
                             "type": "invalid_tool_call"}],
    )


def _complete_prefix(raw: str) -> str | None:
    """The longest start of ``raw`` made only of whole JSON values, closed into one document.

    The cut points are after a complete value inside an object or array: before a comma, or
    after a closing bracket. Whatever followed (a half-written string, a key without its
    value) is left out, and the open brackets are closed. None when no such point exists.
    """
    stack: list[str] = []
    best: tuple[int, str] | None = None
    in_string = escaped = False
    for i, ch in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack:
                return None
            stack.pop()
            if stack:
                best = (i + 1, "".join("}" if c == "{" else "]" for c in reversed(stack)))
        elif ch == "," and stack:
            best = (i, "".join("}" if c == "{" else "]" for c in reversed(stack)))
    return None if best is None else raw[:best[0]] + best[1]


def _whole(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with the array items a cut left incomplete dropped; None if it is incomplete.

    An object is incomplete without one of its ``required`` keys, an array with fewer items
    than its ``minItems`` once its incomplete items are dropped.
    """
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        if any(k not in value for k in schema.get("required") or []):
            return None
        props = schema["properties"]
        out = {}
        for k, v in value.items():
            kept = _whole(v, props[k]) if k in props else v
            if kept is None:
                return None
            out[k] = kept
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        kept_items = [w for w in (_whole(v, schema["items"]) for v in value) if w is not None]
        return kept_items if len(kept_items) >= int(schema.get("minItems", 0)) else None
    return value


def salvage_cut_call(raw: str, by_name: dict[str, dict[str, Any]]) -> AIMessage | None:
    """The call a reply cut at ``max_tokens`` began, from its whole part; None if it has none.

    A small model can repeat itself inside a string until the token limit cuts the JSON,
    though every string is capped: SmolLM2 wrote "No, no, no, ..." into ``final_answer``'s
    answer and claims (4 x 160 characters, past 384 tokens) on a real item, four planner
    calls in a row, each cut and sent back as malformed (40 s each), before a fifth fitted.
    The answer and the claims completed before the cut say what it meant: the call is read
    from them, leaving out the half-written claim and what followed, when the tool is named
    and every required argument is whole or has a declared default. The checks downstream
    (rethink) judge it as any other proposal.
    """
    prefix = _complete_prefix(raw)
    if prefix is None:
        return None
    try:
        return _call_of(json.loads(prefix), by_name, cut=True)
    except json.JSONDecodeError:
        return None


def _call_of(obj: Any, by_name: dict[str, dict[str, Any]], *, cut: bool = False
             ) -> AIMessage | None:
    """The ``AIMessage`` calling the offered tool ``obj`` names; None if it names none.

    A ``cut`` call keeps only its whole part (``_whole``), a required argument the cut left
    unwritten taking its declared default (the confidence comes after the claims in
    ``final_answer``); None when something required is missing.
    """
    name = obj.get("tool") if isinstance(obj, dict) else None
    args = obj.get("arguments") if isinstance(obj, dict) else None
    if name not in by_name or not isinstance(args, dict):
        return None
    params = tool_call_schema([by_name[name]])["anyOf"][0]["properties"]["arguments"]
    if cut:
        declared = inline_refs(parameters_of(by_name[name])).get("properties") or {}
        args = _whole({**{k: p["default"] for k, p in declared.items()
                          if isinstance(p, dict) and "default" in p}, **args}, params)
        if args is None:
            return None
    call = {"name": name, "args": _repair(args, params), "id": _new_call_id(),
            "type": "tool_call"}
    meta = {"salvaged": "cut at max_tokens; the whole part kept"} if cut else {}
    return AIMessage(content="", tool_calls=[call], response_metadata=meta)


def _repair(value: Any, schema: dict[str, Any]) -> Any:
    """Clamp numbers into [minimum, maximum]; drop repeated ids and objects in arrays."""
    kind = schema.get("type")
    if kind in ("number", "integer") and isinstance(value, int | float) and not isinstance(
        value, bool
    ):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value
    if kind == "array" and isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = [_repair(v, schema["items"]) for v in value]
        if "enum" in schema["items"] or schema["items"].get("type") == "object":
            # A small model repeats itself; a repeated id or an identical object adds nothing.
            seen: set[str] = set()
            unique = []
            for item in items:
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    unique.append(item)
            if len(unique) >= int(schema.get("minItems", 0)):
                items = unique
        return items
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: _repair(v, props[k]) if k in props else v for k, v in value.items()}
    return value
