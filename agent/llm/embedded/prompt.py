"""The embedded planner's prompt: messages → chat turns, the tools, worked examples, fitted.

- A 135M model picks a tool by the nearest worked example more than by the question, so the
  prompt carries three (``prompts/embedded_examples``), as user/assistant turns; the caller's
  system prompt (images, evidence) moves into the last user turn, just before the question:
  measured on planner prompts, this is what makes it look first and answer once evidence is
  listed (``tool_prompt`` has the numbers).
- The system text names no ids (they change with every image; the grammar still restricts
  them), so the tools and examples stay a fixed prefix that llama.cpp evaluates once
  (``runtime.PrefixStates``).
- Everything is measured in tokens of the loaded model, rendered with its own chat template
  (``template``), and fitted to its context window: oldest history first, then the examples,
  never the question.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from agent.llm.embedded.native import Dialect, call_text, medloop_to_native
from agent.llm.text_protocol import (
    calls_json,
    chat_role,
    message_text,
    tools_system_prompt,
)
from prompts import load_prompt

__all__ = [
    "CTX_MARGIN",
    "NATIVE_HEAD",
    "TokenCount",
    "WorkedExamples",
    "fit",
    "fit_tool_prompt",
    "to_chatml",
    "tool_prompt",
]

NATIVE_HEAD = "Answer with one tool call."
"""The system text of a native-tools prompt shown without worked examples (the template adds
the tools after it)."""
CTX_MARGIN = 16
"""Tokens kept free beside max_tokens, so an estimate that is slightly off cannot overflow."""
# How a tool result is shown to the model: ChatML has no tool role.
_TOOL_RESULT = "Tool result: "


def to_chatml(messages: Sequence[BaseMessage], dialect: Dialect | None = None
              ) -> list[dict[str, str]]:
    """LangChain messages as ``{"role", "content"}`` chat turns (system, user, assistant).

    The turns are rendered by the model's own chat template (``template.ChatTemplate``), and
    not every template knows a tool role (ChatML has none): tool results become user
    turns prefixed "Tool result: ", and assistant tool calls are written as the same JSON the
    model is constrained to produce, so it sees its own format back (in its template's own
    call format when it has one: ``dialect``).
    """
    out: list[dict[str, str]] = []
    for m in messages:
        role, text = chat_role(m), message_text(m.content)
        if isinstance(m, ToolMessage):
            role, text = "user", _TOOL_RESULT + text
        elif isinstance(m, AIMessage):
            if m.tool_calls and not text.strip():
                text = (calls_json(m.tool_calls) if dialect is None else "\n".join(
                    call_text(tc["name"], tc["args"], dialect) for tc in m.tool_calls))
        elif role not in ("system", "assistant"):  # ChatML knows no other role
            role = "user"
        out.append({"role": role, "content": text})
    return out


@dataclass(frozen=True)
class WorkedExamples:
    """The worked examples of ``prompts/embedded_examples``: a rule and (user, reply) turns."""

    rule: str
    turns: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls, version: int | None = None) -> WorkedExamples:
        """Parse the prompt file: a rule, then blocks headed ``Example N`` ending in ``Reply:``.

        ``version`` picks ``embedded_examples.vN`` (None: the newest); each planner's catalogue
        entry names the one it was tuned with.
        """
        text = load_prompt("embedded_examples", version).render()
        rule, *blocks = re.split(r"^Example \d+\s*$", text, flags=re.MULTILINE)
        turns = []
        for block in blocks:
            user, sep, reply = block.strip().rpartition("\nReply:")
            if not sep:
                raise ValueError(f"embedded_examples: an example has no 'Reply:' line: {block!r}")
            turns.append((user.strip(), reply.strip()))
        return cls(rule=rule.strip(), turns=tuple(turns))

    def messages(self, dialect: Dialect | None = None) -> list[dict[str, str]]:
        """The examples as chat turns; the replies in ``dialect``'s call format when given."""
        out = []
        for user, reply in self.turns:
            text = reply if dialect is None else medloop_to_native(reply, dialect)
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return out


def tool_prompt(
    chat: list[dict[str, str]], tools: Sequence[dict[str, Any]], *, examples: bool = True,
    keep_history: int | None = None, dialect: Dialect | None = None,
    examples_version: int | None = None,
) -> list[dict[str, str]]:
    """The chat turns for a constrained tool call.

    Layout, chosen by measurement on a 135M model (see ``bench/embedded_llm.py``):
    a system message with the tools (``tools_json``) and the examples' rule; the worked
    examples as user/assistant turns; the conversation's earlier turns; and a last user turn
    holding the caller's system prompt (images, evidence, feedback) followed by
    ``Question: <the last user message>``. The small model copies the shape of the turns it
    has just seen, and weighs what it read last, so the context it must act on sits in the
    same place, in the same shape, as in the examples. With the examples in the system text
    and the caller's system prompt ahead of the question, it picked ``final_answer`` after
    evidence in 1 of 6 planner prompts; in this layout, 6 of 6.

    ``keep_history`` keeps only the newest that many earlier messages (None: all). With a
    ``dialect`` (a template with native tool calling) the tools are not described here: the
    template renders them (``native.prompt_tools``), and the system message holds the rule.
    """
    system = [m["content"] for m in chat if m["role"] == "system"]
    rest = [m for m in chat if m["role"] != "system"]
    worked = WorkedExamples.load(examples_version) if examples else None
    head = tools_system_prompt(tools, constrained=True).strip() if dialect is None else ""
    if worked is not None:
        head = f"{head}\n\n{worked.rule}".strip()
    elif not head:
        head = NATIVE_HEAD
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
        *(worked.messages(dialect) if worked is not None else []),
        *history,
        {"role": "user", "content": final},
    ]


TokenCount = Callable[[list[dict[str, str]]], int]
"""A chat's prompt length in the loaded model's tokens (``model`` renders it with the GGUF's
own chat template: ``template.ChatTemplate``)."""


def fit(count: TokenCount, chat: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest non-system messages (never the last) until the prompt fits ``budget``."""
    chat = list(chat)
    while count(chat) > budget:
        drop = next((i for i, m in enumerate(chat[:-1]) if m["role"] != "system"), None)
        if drop is None:
            break
        del chat[drop]
    return chat


def fit_tool_prompt(
    count: TokenCount, chat: list[dict[str, str]], tools: Sequence[dict[str, Any]], budget: int,
    examples: bool, *, dialect: Dialect | None = None, examples_version: int | None = None,
) -> list[dict[str, str]]:
    """The tool prompt within ``budget``: drop the oldest history first, then the examples."""
    n_history = sum(1 for m in chat if m["role"] != "system") - 1
    for use_examples in ((True, False) if examples else (False,)):
        for keep in range(max(n_history, 0), -1, -1):
            prompt = tool_prompt(chat, tools, examples=use_examples, keep_history=keep,
                                 dialect=dialect, examples_version=examples_version)
            if count(prompt) <= budget:
                return prompt
    return prompt
