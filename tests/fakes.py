"""A scripted tool-calling chat model for driving the graph in tests.

LangChain's ``GenericFakeChatModel`` replays scripted ``AIMessage``s; this subclass also accepts
``bind_tools`` (recording what was offered) and records every prompt it was given, so tests can
assert what the planner saw.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult


def call(name: str, **args: Any) -> dict[str, Any]:
    """A tool call dict as a chat model returns it."""
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "tool_call"}


def ai(*calls: dict[str, Any], content: str = "") -> AIMessage:
    """An AIMessage carrying tool calls."""
    return AIMessage(content=content, tool_calls=list(calls))


def final(answer: str, claims: list[tuple[str, list[str]]], confidence: float = 0.8) -> AIMessage:
    """An AIMessage calling final_answer."""
    return ai(
        call(
            "final_answer",
            answer=answer,
            confidence=confidence,
            claims=[{"statement": s, "evidence_ids": ids} for s, ids in claims],
        )
    )


class ScriptedChatModel(GenericFakeChatModel):
    """Replays ``script`` (messages, or callables of the prompt returning a message)."""

    seen: list[list[BaseMessage]] = []
    offered: list[list[dict[str, Any]]] = []
    call_kwargs: list[dict[str, Any]] = []
    bind_kwargs: list[dict[str, Any]] = []

    @classmethod
    def of(
        cls, script: Iterable[AIMessage | Callable[[list[BaseMessage]], AIMessage]]
    ) -> ScriptedChatModel:
        """Build from a finite or infinite script."""
        steps = iter(script)
        model = cls(messages=_Placeholder())
        model.seen = []
        model.offered = []
        model.call_kwargs = []
        model.bind_kwargs = []
        object.__setattr__(model, "_steps", steps)
        return model

    @classmethod
    def forever(cls, message_factory: Callable[[], AIMessage]) -> ScriptedChatModel:
        """A model that never stops calling tools."""
        return cls.of(message_factory() for _ in itertools.count())

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        self.offered.append(list(tools))
        self.bind_kwargs.append(dict(kwargs))
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        self.call_kwargs.append({k: v for k, v in kwargs.items() if k != "tools"})
        step = next(self._steps)  # type: ignore[attr-defined]
        msg = step(messages) if callable(step) else step
        from langchain_core.outputs import ChatGeneration

        return ChatResult(generations=[ChatGeneration(message=msg)])


class _Placeholder(Iterator[AIMessage]):
    def __next__(self) -> AIMessage:  # pragma: no cover - never used, _generate is overridden
        raise StopIteration
