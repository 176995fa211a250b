"""agent.llm.json_tools: prompt-based tool calling around a scripted text-only chat model."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from agent.llm.json_tools import JsonToolsChatModel
from agent.llm.text_protocol import tools_system_prompt

QUESTION = [SystemMessage(content="You are medloop."), HumanMessage(content="Segment the lungs.")]


class RecordingChat(BaseChatModel):
    """A text-only chat model: replays ``script`` and records prompts and keyword arguments."""

    script: list[str]
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    kwargs: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.prompts.append(list(messages))
        self.kwargs.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=self.script.pop(0), id="inner-1", response_metadata={"inner": True}))])


class Measure(BaseModel):
    """Measure a distance in millimetres."""

    image_id: str = Field(description="the image")
    points: list[list[float]] = Field(description="two points, (x, y) pixels")


def test_system_prompt_is_created_when_missing_and_extra_kwargs_are_not_forwarded():
    inner = RecordingChat(script=['{"tool": "Measure", "arguments": {"image_id": "img1", '
                                  '"points": [[0, 0], [3, 4]]}}'])
    model = JsonToolsChatModel(inner=inner)
    ai = model.bind_tools([Measure], tool_choice="any").invoke("How far apart?")

    assert ai.tool_calls[0]["name"] == "Measure"
    assert ai.tool_calls[0]["args"]["points"] == [[0, 0], [3, 4]]
    assert ai.response_metadata["inner"] is True
    prompt = inner.prompts[0]
    assert isinstance(prompt[0], SystemMessage)
    assert prompt[0].content == tools_system_prompt([convert_to_openai_tool(Measure)])
    assert isinstance(prompt[1], HumanMessage)
    assert inner.kwargs == [{}]


def test_without_tools_the_wrapper_passes_text_through():
    inner = RecordingChat(script=['{"tool": "segment", "arguments": {"image_id": "img1"}}'])
    ai = JsonToolsChatModel(inner=inner).invoke(QUESTION)
    assert ai.tool_calls == []  # nothing was offered, so nothing is parsed
    assert inner.prompts[0][0].content == "You are medloop."


def test_the_system_prompt_gets_the_tools_appended():
    inner = RecordingChat(script=["fine"])
    JsonToolsChatModel(inner=inner).bind_tools([Measure]).invoke(QUESTION)
    system = inner.prompts[0][0].content
    assert system.startswith("You are medloop.\n\nYou can call tools.")
    assert "- Measure(image_id: string, points: list of list of number)" in system
