"""agent.llm.embedded.prompt: ChatML, the worked examples, and the measured prompt layout."""

from __future__ import annotations

import json

from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from agent.llm.embedded.prompt import WorkedExamples, to_chatml, tool_prompt
from tests.agent.llm.embedded.cases import DESCRIBE, IMAGE_ID, planner_prompt


def test_messages_become_chatml():
    chat = to_chatml([
        SystemMessage(content="sys"), HumanMessage(content="q"),
        AIMessage(content="", tool_calls=[{"name": "describe_image", "args": {"image_id": "x"},
                                           "id": "call_1", "type": "tool_call"}]),
        ToolMessage(content="E1: a chest radiograph", tool_call_id="call_1"),
    ])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert json.loads(chat[2]["content"]) == {"tool": "describe_image",
                                              "arguments": {"image_id": "x"}}
    assert chat[3]["content"] == "Tool result: E1: a chest radiograph"


def test_chatml_keeps_the_roles_it_knows_and_reads_text_blocks():
    chat = to_chatml([ChatMessage(role="assistant", content="a"),
                      ChatMessage(role="critic", content="b"),
                      HumanMessage(content=[{"type": "text", "text": "look"},
                                            {"type": "image_url", "image_url": {"url": "x"}}])])
    assert [m["role"] for m in chat] == ["assistant", "user", "user"]
    assert chat[2]["content"] == "look"


def test_tool_prompt_puts_examples_as_turns_and_context_last():
    worked = WorkedExamples.load()
    n = len(worked.turns)
    assert n >= 3
    for _, reply in worked.turns:
        assert set(json.loads(reply)) == {"tool", "arguments"}
    chat = to_chatml(planner_prompt([], "Describe this image"))
    prompt = tool_prompt(chat, [DESCRIBE])
    head = prompt[0]["content"]
    # The ids that exist now are in the last turn, not the system text: a system text that
    # changed with every image would defeat the prompt cache (tools + examples).
    assert prompt[0]["role"] == "system"
    assert 'describe_image(image_id: an image id from "Images")' in head
    assert IMAGE_ID not in head
    assert [m["role"] for m in prompt[1:1 + 2 * n]] == ["user", "assistant"] * n
    assert prompt[-1]["role"] == "user"
    assert prompt[-1]["content"].endswith("Question: Describe this image")
    assert IMAGE_ID in prompt[-1]["content"]


def test_history_is_trimmed_from_the_oldest_and_examples_can_be_left_out():
    chat = to_chatml([SystemMessage(content="ctx"), HumanMessage(content="first"),
                      AIMessage(content="one"), HumanMessage(content="second")])
    prompt = tool_prompt(chat, [DESCRIBE], examples=False, keep_history=1)
    assert [m["content"] for m in prompt[1:]] == ["one", "ctx\n\nQuestion: second"]


def test_a_catalogue_prompt_keeps_its_start_whatever_the_offer():
    """The prompt describes the agent's catalogue; the offer is the grammar's business."""
    from tests.agent.llm.embedded.cases import FINAL_ANSWER, MEASURE

    catalogue = [DESCRIBE, MEASURE, FINAL_ANSWER]
    look = tool_prompt(to_chatml(planner_prompt([], "How far apart?")), catalogue)
    answer = tool_prompt(to_chatml(planner_prompt(["E1 (describe_image): chest"], "How far?")),
                         catalogue)
    assert look[:-1] == answer[:-1], "all but the last turn is the same: one saved state"
    assert "measure_distance" in look[0]["content"] and "final_answer" in look[0]["content"]
    assert "Tools you can call now" not in look[-1]["content"]  # it misled the 1.5B
