"""Recover tool calls that a model wrote as JSON text, repair them, and check them.

Models without native tool calling (the embedded SmolLM2, ``openai-json:`` servers, local
transformers models) write their calls into the reply text, in whatever shape their training
favoured: a bare object, a ```json fence, Hermes/Qwen ``<tool_call>`` tags, a list of calls, the
OpenAI wire format with its arguments as a JSON *string*, and often with small defects (trailing
commas, single quotes, Python literals, a reply cut off at the token limit). This module turns
all of that into LangChain ``ToolCall`` dicts, and everything it cannot use into
``InvalidToolCall`` dicts whose ``error`` tells the model what to fix, so the graph can hand it
back for a retry instead of failing (the *retryable* error tier).

Model output is data, never code: the repair is a small tokenizer that rewrites the text into
strict JSON, and ``json.loads`` reads the result. Nothing here calls ``eval`` or
``ast.literal_eval``, and nothing here raises on malformed text.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

__all__ = [
    "ParsedToolCalls",
    "loads_lenient",
    "parse_tool_calls",
    "repair_json",
    "tool_parameters",
    "validate_args",
]

# Keys that name the tool, and keys that hold its arguments, across the shapes models write
# (ours, OpenAI's, Hermes/Qwen, Llama 3.1's ``parameters``, ReAct's ``action_input``).
# Order matters: the first present wins.
_NAME_KEYS = ("tool", "name", "tool_name", "function_name", "function", "action")
_ARG_KEYS = ("arguments", "args", "parameters", "params", "input", "action_input", "tool_input")
_WRAPPER_KEYS = ("tool_calls", "tool_call", "calls", "function_call", "actions")
_WRAPPER_DEPTH = 2  # how deep to look for calls inside such wrappers
_SHOW_TOOLS = 30  # tool names listed in an unknown-tool error
_MAX_RAW_ARGS = 2000  # characters of raw text kept in an invalid call

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)
_TOOL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.S)
_CALL_HINT = re.compile(r"""["']?\b(?:tool|name|function|arguments|tool_calls)\b["']?\s*:""")
_NAME_GUESS = re.compile(r"""["']?\b(?:tool|name)\b["']?\s*:\s*["']([^"'\n]{1,80})["']""")
_BARE_TOKEN = re.compile(r"[A-Za-z0-9_$.+\-]+")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {
    "true": "true", "True": "true", "TRUE": "true",
    "false": "false", "False": "false", "FALSE": "false",
    "null": "null", "None": "null", "none": "null", "NULL": "null", "undefined": "null",
    "NaN": "null", "Infinity": "null", "-Infinity": "null",
}  # fmt: skip
_EXPECTED_SHAPE = '{"tool": "<tool name>", "arguments": {...}}'


@dataclass
class ParsedToolCalls:
    """What a reply's text asked for.

    Attributes:
        calls: valid calls (name known, arguments match the tool's schema), as LangChain
            ``ToolCall`` dicts with fresh ``call_<hex>`` ids.
        invalid: calls that were meant but cannot run, as ``InvalidToolCall`` dicts whose
            ``error`` is written for the model to act on; ``args`` holds the raw text.
        repaired: True when some JSON needed repair before it parsed (worth a trace note).
    """

    calls: list[ToolCall] = field(default_factory=list)
    invalid: list[InvalidToolCall] = field(default_factory=list)
    repaired: bool = False


def parse_tool_calls(text: str, tools: Sequence[Mapping[str, Any]]) -> ParsedToolCalls:
    """Find, repair and validate the tool calls written in ``text``.

    ``tools`` are OpenAI-format dicts (``{"type": "function", "function": {"name",
    "description", "parameters"}}``); flat ``{"name", "parameters"}`` dicts work too. Text with
    no JSON in it is a plain answer: no calls and no invalid calls. JSON that is clearly meant
    as a call but cannot be used becomes an invalid call, never an exception.
    """
    result = ParsedToolCalls()
    if not isinstance(text, str) or not text.strip():
        return result
    specs = tool_parameters(tools)
    text = _strip_reasoning(text)
    tagged = [m.group(1) for m in _TOOL_TAG.finditer(text)]
    fenced = [m.group(1) for m in _FENCE.finditer(text) if re.search(r"[{\[]", m.group(1))]
    if tagged:  # inside <tool_call> tags everything is meant as a call
        regions, prose = tagged, ""
    elif fenced:
        regions, prose = fenced, _FENCE.sub("", text)
    else:
        regions, prose = [text], ""
    for region in regions:
        _parse_region(region, specs, bool(tagged), not prose.strip(), result)
    return result


def tool_parameters(tools: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tool name → its JSON-schema ``parameters``, from OpenAI-format or flat tool dicts."""
    specs: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if isinstance(name, str) and isinstance(fn, Mapping):
            params = fn.get("parameters")
            specs[name] = dict(params) if isinstance(params, Mapping) else {}
    return specs


# --- finding JSON in text -------------------------------------------------------------------


def _strip_reasoning(text: str) -> str:
    """Drop ``<think>`` blocks: a reasoning model drafts calls there that it did not make."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:  # the opening tag was in the prompt (Qwen3-style templates)
        text = text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0]  # reasoning cut off by the token limit


def _json_spans(region: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each top-level ``{...}`` / ``[...]`` in ``region``.

    Brackets inside strings do not count. A span still open at the end of the region runs to
    its end (a reply cut off at the token limit), for the repair to close. A single quote opens
    a string only where a JSON value or key may start, so an apostrophe in prose ("don't")
    cannot swallow the rest of the reply.
    """
    i, n = 0, len(region)
    while i < n:
        if region[i] not in "{[":
            i += 1
            continue
        start, depth, quote, prev = i, 0, "", ""
        j = i
        while j < n:
            c = region[j]
            if quote:
                if c == "\\":
                    j += 1
                elif c == quote:
                    quote = ""
            elif c == '"' or (c == "'" and prev in ("{", "[", ",", ":")):
                quote = c
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    break
            if not c.isspace():
                prev = c
            j += 1
        end = min(j + 1, n)
        yield start, end
        i = end


def _parse_region(
    region: str,
    specs: dict[str, dict[str, Any]],
    tagged: bool,
    no_prose: bool,
    result: ParsedToolCalls,
) -> None:
    """Read the calls in one region (a tag body, a fence body, or the whole reply).

    JSON that fails to parse or names no tool is reported only when it was surely meant as a
    call: inside ``<tool_call>`` tags, when the reply is nothing but JSON, or (for parse
    failures) when it has call-like keys. JSON quoted in a prose answer is left alone.
    """
    spans = list(_json_spans(region))
    starts = [s for s, _ in spans]
    ends = [e for _, e in spans]
    outside = "".join(region[a:b] for a, b in zip([0, *ends], [*starts, len(region)], strict=True))
    intended = tagged or (no_prose and not outside.strip())
    if tagged and not spans and region.strip():
        hint = f"the tool call is not JSON. Write it as {_EXPECTED_SHAPE}"
        result.invalid.append(_invalid(None, region.strip(), hint))
    for start, end in spans:
        raw = region[start:end]
        value, error, repaired = loads_lenient(raw)
        if error is not None:
            if intended or _looks_like_call(raw, specs):
                guess = _NAME_GUESS.search(raw)
                result.invalid.append(
                    _invalid(
                        guess.group(1) if guess else None,
                        raw,
                        f"could not read the tool call as JSON ({error}). Reply with one JSON "
                        f"object: {_EXPECTED_SHAPE}",
                    )
                )
            continue
        before = len(result.calls) + len(result.invalid)
        _collect(value, _Ctx(specs, result, strict=intended), _WRAPPER_DEPTH)
        found = len(result.calls) + len(result.invalid) > before
        result.repaired |= repaired and found
        if not found and isinstance(value, dict) and intended:
            result.invalid.append(
                _invalid(None, raw, f"the JSON names no tool. Reply with {_EXPECTED_SHAPE}")
            )


def _looks_like_call(raw: str, specs: Mapping[str, Any]) -> bool:
    if _CALL_HINT.search(raw):
        return True
    return any(f'"{name}"' in raw or f"'{name}'" in raw for name in specs)


# --- shapes ---------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """What the shape readers need: the offered tools, where results go, how strict to be.

    ``strict`` is False for JSON found inside prose: there a weakly call-shaped object
    (``{"name": "nodule", "size_mm": 4}``) naming no known tool is data, not a failed call.
    """

    specs: dict[str, dict[str, Any]]
    result: ParsedToolCalls
    strict: bool


def _collect(value: Any, ctx: _Ctx, depth: int) -> None:
    """Add every call found in ``value``: a call object, a list of them, or a wrapper."""
    if isinstance(value, list):
        for item in value:
            _collect(item, ctx, depth)
        return
    if not isinstance(value, dict):
        return
    shape = _call_shape(value, ctx.specs)
    if shape is not None:
        name, args, strong = shape
        _add_call(name, args, ctx, report_unknown=strong or ctx.strict)
        return
    if depth <= 0:
        return
    for key in _WRAPPER_KEYS:  # {"tool_calls": [...]}
        if isinstance(value.get(key), (dict, list)):
            _collect(value[key], ctx, depth - 1)


def _call_shape(obj: dict[str, Any], specs: Mapping[str, Any]) -> tuple[Any, Any, bool] | None:
    """``(name, arguments, strong)`` when ``obj`` is shaped like a call, else None.

    ``strong`` means the shape could hardly be anything but a call (an ``arguments`` key, a
    ``tool`` or ``function`` key); a bare ``name`` with other keys could be ordinary data.
    """
    fn = obj.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):  # OpenAI wire format
        return fn["name"], next((fn[k] for k in _ARG_KEYS if k in fn), {}), True
    name_key = next((k for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name_key is None:
        if len(obj) == 1:  # {"segment": {"image_id": "img1"}}
            ((key, val),) = obj.items()
            if key in specs and (val is None or isinstance(val, dict)):
                return key, val or {}, True
        return None
    arg_key = next((k for k in _ARG_KEYS if k in obj), None)
    strong = arg_key is not None or name_key not in ("name", "action")
    if arg_key is not None:
        return obj[name_key], obj[arg_key], strong
    # Flattened: {"tool": "segment", "image_id": "img1"}.
    rest = {k: v for k, v in obj.items() if k not in (name_key, "id", "type")}
    return obj[name_key], rest, strong


def _add_call(name: Any, args: Any, ctx: _Ctx, *, report_unknown: bool) -> None:
    result = ctx.result
    raw_args = args if isinstance(args, str) else _dump(args)
    resolved = _resolve_name(name, ctx.specs)
    if resolved is None:
        if report_unknown:
            label = name if isinstance(name, str) else None
            result.invalid.append(_invalid(label, raw_args, _unknown_tool_error(name, ctx.specs)))
        return
    if isinstance(args, str):
        parsed, error, repaired = loads_lenient(args) if args.strip() else ({}, None, False)
        if error is not None:
            result.invalid.append(
                _invalid(resolved, args, f"the arguments for {resolved!r} are not valid JSON "
                                         f"({error}); give them as a JSON object")
            )
            return
        result.repaired |= repaired
        args = parsed
    if args is None:
        args = {}
    if not isinstance(args, dict):
        result.invalid.append(
            _invalid(resolved, raw_args, f"the arguments for {resolved!r} must be a JSON object "
                                         f"of named values, not {_json_type(args)}")
        )
        return
    checked, errors = validate_args(args, ctx.specs[resolved])
    if errors:
        error = f"tool {resolved!r}: " + "; ".join(errors)
        result.invalid.append(_invalid(resolved, raw_args, error))
        return
    result.calls.append(tool_call(name=resolved, args=checked, id=_new_id()))


def _resolve_name(name: Any, specs: Mapping[str, Any]) -> str | None:
    """The offered tool ``name`` means, forgiving case, ``functions.`` prefixes and dashes."""
    if not isinstance(name, str):
        return None
    name = name.strip().strip("`'\"")
    if name.startswith("functions."):
        name = name[len("functions."):]
    if name in specs:
        return name

    def norm(s: str) -> str:
        return re.sub(r"[\s\-]+", "_", s.strip().lower())

    matches = [known for known in specs if norm(known) == norm(name)]
    return matches[0] if len(matches) == 1 else None


def _unknown_tool_error(name: Any, specs: Mapping[str, Any]) -> str:
    names = sorted(specs)
    if not names:
        return f"unknown tool {name!r}: no tools are available now; answer in plain text"
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(names[:_SHOW_TOOLS]) + (" …" if len(names) > _SHOW_TOOLS else "")
    return f"unknown tool {name!r}.{hint} The available tools are: {shown}"


def _invalid(name: str | None, args: str, error: str) -> InvalidToolCall:
    if len(args) > _MAX_RAW_ARGS:  # a runaway reply should not bloat the checkpointed state
        args = args[:_MAX_RAW_ARGS] + "…"
    return invalid_tool_call(name=name, args=args, id=_new_id(), error=error)


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- repair ---------------------------------------------------------------------------------


def loads_lenient(text: str) -> tuple[Any, str | None, bool]:
    """``(value, error, repaired)``: strict ``json.loads`` first, then after ``repair_json``.

    ``error`` is None on success, else the parser's message for the repaired text.
    """
    try:
        return json.loads(text), None, False
    except ValueError:
        pass
    except RecursionError:
        return None, "nested too deeply", False
    fixed = repair_json(text)
    try:
        return json.loads(fixed, strict=False), None, True
    except ValueError as exc:
        return None, str(exc), True
    except RecursionError:
        return None, "nested too deeply", True


class _Frame:
    """One open container while repairing: its closer, where we are in it, where to trim."""

    __slots__ = ("closer", "state", "trim")

    def __init__(self, closer: str, trim: int) -> None:
        self.closer = closer
        # objects: key → after_key → value → done; arrays: need → done
        self.state = "key" if closer == "}" else "need"
        self.trim = trim  # len(out) before the last comma (or just after the opener)


def repair_json(text: str) -> str:
    """Rewrite near-JSON into strict JSON, as far as that is possible without guessing.

    Fixes: comments (``//``, ``/* */``, ``#``), single-quoted strings, Python and JavaScript
    literals (``True``, ``None``, ``undefined``), unquoted keys and bare-word values, ``=`` for
    ``:``, trailing and doubled commas, missing commas and colons between members, stray
    closers, and a text cut off mid-way (an open string is closed, a dangling key dropped, open
    containers closed). Anything after the first complete top-level value is dropped. The
    result is only a candidate: the caller still parses it.
    """
    return _Repair(text).run()


class _Repair:
    """A single left-to-right pass over the text, emitting strict JSON tokens into ``out``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.out: list[str] = []
        self.stack: list[_Frame] = []
        self.open = {"}": 0, "]": 0}  # open containers by closer, so a stray one costs O(1)

    def run(self) -> str:
        text, i, n = self.text, 0, len(self.text)
        while i < n:
            c = text[i]
            if c.isspace():
                self.out.append(c)
                i += 1
            elif text.startswith(("//", "/*"), i) or c == "#":
                i = self._skip_comment(i)
            elif c in "{[":
                self._before_value(is_key_ok=False)
                self.out.append(c)
                self.stack.append(_Frame("}" if c == "{" else "]", len(self.out)))
                self.open[self.stack[-1].closer] += 1
                i += 1
            elif c in "}]":
                i += 1
                if self._close_to(c) and not self.stack:
                    break  # the top-level value is complete; what follows is prose
            elif c in ",:=":
                self._punctuation(c)
                i += 1
            elif c in "\"'":
                value, i = _read_string(text, i)
                self._before_value(is_key_ok=True)
                self.out.append(json.dumps(value, ensure_ascii=False))
            else:
                i = self._bare(i)
        while self.stack:
            _close(self.out, self.stack.pop())
        return "".join(self.out)

    def _skip_comment(self, i: int) -> int:
        text = self.text
        if text.startswith("/*", i):
            close = text.find("*/", i + 2)
            return len(text) if close < 0 else close + 2
        nl = text.find("\n", i)
        return len(text) if nl < 0 else nl

    def _close_to(self, closer: str) -> bool:
        """Close open containers up to the one ``closer`` ends; a stray closer is dropped."""
        if not self.open[closer]:
            return False
        while self.stack:
            frame = self.stack.pop()
            self.open[frame.closer] -= 1
            _close(self.out, frame)
            if frame.closer == closer:
                break
        return True

    def _punctuation(self, c: str) -> None:
        """Keep a comma or colon only where JSON expects one (drops doubles and strays)."""
        if not self.stack:
            return
        frame = self.stack[-1]
        if c == "," and frame.state == "done":
            frame.trim = len(self.out)
            self.out.append(",")
            frame.state = "key" if frame.closer == "}" else "need"
        elif c in ":=" and frame.state == "after_key":
            self.out.append(":")
            frame.state = "value"

    def _bare(self, i: int) -> int:
        """An unquoted word: a key, a literal, a number, or a string value."""
        m = _BARE_TOKEN.match(self.text, i)
        if m is None:  # a character JSON has no use for
            return i + 1
        is_key = self._before_value(is_key_ok=True)
        self.out.append(json.dumps(m.group()) if is_key else _bare_value(m.group()))
        return m.end()

    def _before_value(self, *, is_key_ok: bool) -> bool:
        """Insert what must come before a new token; True when the token is an object key."""
        if not self.stack:
            return False
        frame, out = self.stack[-1], self.out
        if frame.closer == "]":
            if frame.state == "done":  # missing comma between elements
                frame.trim = len(out)
                out.append(",")
            frame.state = "done"
            return False
        if frame.state == "done":  # missing comma between members
            frame.trim = len(out)
            out.append(",")
            frame.state = "key"
        if frame.state == "key":
            frame.state = "after_key"
            return is_key_ok
        if frame.state == "after_key":  # missing colon
            out.append(":")
        frame.state = "done"
        return False


def _close(out: list[str], frame: _Frame) -> None:
    """Close ``frame``: drop a trailing comma or a dangling key, fill a missing value."""
    if frame.closer == "}" and frame.state == "value":
        out.append("null")
    elif (frame.closer == "}" and frame.state in ("key", "after_key")) or frame.state == "need":
        del out[frame.trim:]
    out.append(frame.closer)


def _read_string(text: str, i: int) -> tuple[str, int]:
    """Decode the string starting at ``text[i]`` (either quote); unclosed runs to the end."""
    quote, i, n = text[i], i + 1, len(text)
    chars: list[str] = []
    escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\",
               '"': '"', "'": "'"}  # fmt: skip
    while i < n:
        c = text[i]
        if c == quote:
            return "".join(chars), i + 1
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in escapes:
                chars.append(escapes[nxt])
                i += 2
                continue
            hexes = text[i + 2 : i + 6]
            if nxt == "u" and len(hexes) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexes):
                chars.append(chr(int(hexes, 16)))
                i += 6
                continue
            chars.append("\\")  # an unknown escape such as \d keeps its backslash
            i += 1
            continue
        chars.append(c)
        i += 1
    return "".join(chars), n


def _bare_value(token: str) -> str:
    """A bare word in value position: a literal, a number, or else a string."""
    if token in _LITERALS:
        return _LITERALS[token]
    if _JSON_NUMBER.fullmatch(token):
        return token
    try:
        return str(int(token, 10))  # +3, 007
    except ValueError:
        pass
    try:
        number = float(token)  # .5, 5., 1e3
    except ValueError:
        return json.dumps(token)
    return json.dumps(number) if math.isfinite(number) else "null"


# --- validation -----------------------------------------------------------------------------


def validate_args(
    args: dict[str, Any], schema: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Check ``args`` against a tool's parameters schema; returns ``(args, errors)``.

    Covers the JSON-schema subset pydantic emits: ``type`` (or a list of types), ``enum``,
    ``const``, ``required``, ``properties``, ``additionalProperties``, ``items``,
    ``min/maxItems``, ``min/maxLength``, ``pattern``, numeric bounds, ``anyOf``/``oneOf``/
    ``allOf`` and local ``$ref``. It coerces what the tool's pydantic model would accept anyway
    (``"3"`` → 3, ``2.0`` → 2, ``"true"`` → True), so the returned args are the ones to use.
    Each error names the argument by its path (``claims[0].evidence_ids``).
    """
    errors: list[str] = []
    value = _check(args, dict(schema), "", dict(schema), errors)
    return (value if isinstance(value, dict) else args), errors


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _where(path: str) -> str:
    return f"argument {path!r}" if path else "the arguments"


def _resolve_ref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return {k: v for k, v in schema.items() if k != "$ref"}
    return {**node, **{k: v for k, v in schema.items() if k != "$ref"}}


def _check(
    value: Any, schema: dict[str, Any], path: str, root: dict[str, Any], errors: list[str]
) -> Any:
    schema = _resolve_ref(schema, root)
    for sub in schema.get("allOf") or []:
        if isinstance(sub, dict):
            value = _check(value, sub, path, root, errors)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        value = _check_any(value, [b for b in branches if isinstance(b, dict)], path, root, errors)
    if "const" in schema and value != schema["const"]:
        errors.append(f"{_where(path)} must be {schema['const']!r}, not {value!r}")
        return value
    types = schema.get("type")
    if types is None:
        types = "object" if "properties" in schema else ("array" if "items" in schema else None)
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        coerced = _coerce(value, allowed)
        if coerced is _MISMATCH:
            errors.append(f"{_where(path)} must be {' or '.join(allowed)}, not {_json_type(value)}")
            return value
        value = coerced
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        close = difflib.get_close_matches(str(value), [str(e) for e in enum], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.append(f"{_where(path)} is {value!r}, not one of {enum}{hint}")
        return value
    if isinstance(value, dict):
        return _check_object(value, schema, path, root, errors)
    if isinstance(value, list):
        return _check_array(value, schema, path, root, errors)
    _check_bounds(value, schema, path, errors)
    return value


def _check_any(value: Any, branches: list[dict[str, Any]], path: str, root: dict[str, Any],
               errors: list[str]) -> Any:
    """The first branch that fits; otherwise the errors of the closest non-null branch."""
    best: tuple[int, bool, list[str]] | None = None
    for branch in branches:
        errs: list[str] = []
        checked = _check(value, branch, path, root, errs)
        if not errs:
            return checked
        rank = (len(errs), _resolve_ref(branch, root).get("type") == "null", errs)
        if best is None or rank[:2] < best[:2]:
            best = rank
    if best is not None:
        errors.extend(best[2])
    return value


class _Mismatch:
    """Sentinel: the value has none of the allowed types."""


_MISMATCH = _Mismatch()


def _coerce(value: Any, allowed: list[str]) -> Any:
    """``value`` as one of the ``allowed`` JSON types, or ``_MISMATCH``."""
    kind = _json_type(value)
    if kind in allowed or (kind == "integer" and "number" in allowed):
        return value
    for target in allowed:
        if target == "integer":
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                return int(value)
        elif target == "number" and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                return number
        elif target == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return _MISMATCH


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str, root: dict[str, Any],
                  errors: list[str]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    out = dict(value)
    for key in schema.get("required") or []:
        if key not in value:
            where = f"{path}.{key}" if path else key
            errors.append(f"missing required argument {where!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in props and isinstance(props[key], dict):
            out[key] = _check(item, props[key], where, root, errors)
        elif extra is False:
            known = ", ".join(props) or "none"
            errors.append(f"unexpected argument {where!r} (accepted: {known})")
        elif isinstance(extra, dict):
            out[key] = _check(item, extra, where, root, errors)
    return out


def _check_array(value: list[Any], schema: dict[str, Any], path: str, root: dict[str, Any],
                 errors: list[str]) -> list[Any]:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        errors.append(f"{_where(path)} needs at least {low} item(s), got {len(value)}")
    if isinstance(high, int) and len(value) > high:
        errors.append(f"{_where(path)} takes at most {high} item(s), got {len(value)}")
    items = schema.get("items")
    if isinstance(items, dict):
        return [_check(v, items, f"{path}[{k}]", root, errors) for k, v in enumerate(value)]
    if isinstance(items, list):  # tuple form (prefixItems in newer drafts)
        return [_check(v, s, f"{path}[{k}]", root, errors) if isinstance(s, dict) else v
                for k, (v, s) in enumerate(zip(value, items, strict=False))] + value[len(items):]
    return value


def _check_bounds(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if isinstance(value, str):
        low, high = schema.get("minLength"), schema.get("maxLength")
        if isinstance(low, int) and len(value) < low:
            errors.append(f"{_where(path)} must have at least {low} characters")
        if isinstance(high, int) and len(value) > high:
            errors.append(f"{_where(path)} must have at most {high} characters, got {len(value)}")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                matched = re.search(pattern, value) is not None
            except re.error:
                matched = True  # a pattern Python cannot read is not the model's fault
            if not matched:
                errors.append(f"{_where(path)} must match {pattern!r}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        checks = (
            ("minimum", lambda b: value >= b, ">="),
            ("maximum", lambda b: value <= b, "<="),
            ("exclusiveMinimum", lambda b: value > b, ">"),
            ("exclusiveMaximum", lambda b: value < b, "<"),
        )
        for key, ok, op in checks:
            bound = schema.get(key)
            if isinstance(bound, (int, float)) and not isinstance(bound, bool) and not ok(bound):
                errors.append(f"{_where(path)} must be {op} {bound}, got {value}")
