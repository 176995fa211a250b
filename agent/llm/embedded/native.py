"""Native tool calling: a GGUF whose chat template has tool calls is prompted and read its way.

Qwen2.5 (and Hermes-style fine-tunes) were trained to see the tools inside ``<tools></tools>``
in their system turn and to answer ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``;
Llama 3.1+ templates render the tools themselves and expect ``{"name": ..., "parameters":
...}``. Shown medloop's own protocol instead (tools as lines of text, ``{"tool": ...,
"arguments": ...}``), such a model reads a format it never saw. Here:

- ``dialect_of`` reads which format the template speaks from its own text (None: medloop's);
- ``prompt_tools`` gives the tools as the template renders them (``tools=`` to the Jinja
  template), with the ids the offer wrote in as ``enum``s taken out: they change with every
  image, and rendered into the system turn they would make every prompt a new prefix
  (``runtime.PrefixStates`` could reuse nothing). The grammar still allows only those ids;
- ``call_text`` writes a call in the dialect (the worked examples' replies, earlier calls);
- ``call_grammar`` wraps the one-call JSON grammar (``grammar.tool_call_schema`` with the
  dialect's key names) in the dialect's markers, so the reply is still always a parseable call
  to an offered tool with valid arguments;
- ``read_call`` turns the reply back into medloop's ``{"tool", "arguments"}`` JSON for
  ``grammar.parse_tool_call``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.llm.embedded.grammar import tool_call_grammar
from agent.llm.text_protocol import inline_refs, parameters_of, tool_name

__all__ = ["DIALECTS", "Dialect", "call_grammar", "call_text", "dialect_of", "prompt_tools",
           "read_call"]

Name = Literal["hermes", "llama3"]


@dataclass(frozen=True)
class Dialect:
    """How one family of templates writes a tool call.

    Attributes:
        name: ``hermes`` (Qwen2.5, Hermes, Qwen3) or ``llama3`` (Llama 3.1 and later).
        args_key: the key holding the arguments (``arguments`` / ``parameters``).
        prefix, suffix: the text around the call's JSON.
    """

    name: Name
    args_key: str
    prefix: str
    suffix: str


DIALECTS: dict[Name, Dialect] = {
    "hermes": Dialect("hermes", "arguments", "<tool_call>\n", "\n</tool_call>"),
    "llama3": Dialect("llama3", "parameters", "", ""),
}


def dialect_of(template: str) -> Dialect | None:
    """The tool-call dialect a chat template speaks, or None when it renders no tools.

    A template "has tools" when it reads a ``tools`` variable; which dialect, from what it
    writes: ``<tool_call>`` (Hermes/Qwen) or Llama 3's ``"parameters"`` with its ipython
    environment or ``<|python_tag|>``.
    """
    if not re.search(r"\btools\b", template):
        return None
    if "<tool_call>" in template:
        return DIALECTS["hermes"]
    if "<|python_tag|>" in template or ("parameters" in template and "ipython" in template):
        return DIALECTS["llama3"]
    return None


_OFFERED_ID = re.compile(r"^(img-[0-9a-f]+|E\d+|mask-[0-9a-f]+)$")


def _without_ids(node: Any) -> Any:
    """The schema with every enum of ids removed (the tools' own enums, presets, stay)."""
    if isinstance(node, list):
        return [_without_ids(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without_ids(v) for k, v in node.items()}
    enum = out.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) and _OFFERED_ID.match(v)
                                               for v in enum):
        del out["enum"]
    return out


def prompt_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as the template should render them: OpenAI format, ``$ref``s inlined, no ids.

    Key order is kept (``tojson`` does not sort), so the same tools render the same text.
    """
    out = []
    for tool in tools:
        fn = tool.get("function", tool)
        out.append({"type": "function", "function": {
            "name": tool_name(tool),
            "description": str(fn.get("description") or ""),
            "parameters": _without_ids(inline_refs(parameters_of(tool))),
        }})
    return out


def call_text(name: str, args: dict[str, Any], dialect: Dialect) -> str:
    """One call written the way the dialect writes it."""
    body = json.dumps({"name": name, dialect.args_key: args}, ensure_ascii=False)
    return f"{dialect.prefix}{body}{dialect.suffix}"


def medloop_to_native(reply: str, dialect: Dialect) -> str:
    """A worked example's reply (``{"tool": ..., "arguments": ...}``) in the dialect."""
    obj = json.loads(reply)
    return call_text(str(obj["tool"]), dict(obj.get("arguments") or {}), dialect)


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def call_grammar(schema: dict[str, Any], dialect: Dialect) -> str:
    """GBNF for one call in the dialect, from ``grammar.tool_call_schema``'s schema.

    The branches' ``tool``/``arguments`` keys become the dialect's ``name``/``arguments`` (or
    ``parameters``); the JSON rule becomes ``call``, wrapped in the dialect's markers.
    """
    branches = []
    for branch in schema["anyOf"]:
        props = branch["properties"]
        branches.append({
            "type": "object",
            "properties": {"name": props["tool"], dialect.args_key: props["arguments"]},
            "required": ["name", dialect.args_key]})
    body = tool_call_grammar({"anyOf": branches})
    if not dialect.prefix and not dialect.suffix:
        return body
    renamed = re.sub(r"^root ::=", "call ::=", body, count=1, flags=re.MULTILINE)
    return (f"root ::= {_gbnf_literal(dialect.prefix)} call {_gbnf_literal(dialect.suffix)}\n"
            f"{renamed}")


def read_call(raw: str, dialect: Dialect) -> str:
    """The reply as medloop's ``{"tool": ..., "arguments": ...}`` JSON text.

    A call cut at ``max_tokens`` after its name and the start of its arguments comes back in
    medloop's keys as far as it goes, for ``grammar.parse_tool_call`` to read from its whole
    part (``grammar.salvage_cut_call``); other text that is not one complete call is returned
    as it is, for it to report.
    """
    text = raw.strip()
    if dialect.prefix.strip() and text.startswith(dialect.prefix.strip()):
        text = text[len(dialect.prefix.strip()):]
        if dialect.suffix.strip() and text.rstrip().endswith(dialect.suffix.strip()):
            text = text.rstrip()[: -len(dialect.suffix.strip())]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        key = re.escape(dialect.args_key)
        begun = re.match(rf'\s*\{{\s*"name"\s*:\s*("[^"\\]*")\s*,\s*"{key}"\s*:', text)
        return (f'{{"tool": {begun.group(1)}, "arguments":{text[begun.end():]}' if begun
                else raw)
    if not isinstance(obj, dict) or "name" not in obj:
        return raw
    return json.dumps({"tool": obj["name"], "arguments": obj.get(dialect.args_key)})
