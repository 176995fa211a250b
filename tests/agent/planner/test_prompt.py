"""agent.planner.prompt: what the planner reads each round, rebuilt from the state."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.context import AgentContext
from agent.planner.prompt import build_prompt, earlier_question, split_turns
from tools.evidence import Evidence
from tools.image import ImageRef

CALL = {"name": "describe_image", "args": {"image_id": "img-1"}, "id": "c1", "type": "tool_call"}


def conversation() -> list:
    return [HumanMessage(content="What is this?"), AIMessage(content="", tool_calls=[CALL]),
            ToolMessage(content="E1: chest", tool_call_id="c1"),
            AIMessage(content="A chest radiograph."), HumanMessage(content="How big is it?")]


def test_earlier_turns_keep_only_questions_and_answers():
    history, question = split_turns(conversation())
    assert question == "How big is it?"
    assert [(type(m).__name__, m.content) for m in history] == [
        ("HumanMessage", "What is this?"), ("AIMessage", "A chest radiograph.")]
    assert earlier_question(conversation()) == "What is this?"
    assert earlier_question(conversation()[:1]) is None


def test_the_prompt_holds_images_evidence_feedback_and_the_rounds_left():
    state = {"messages": conversation(), "round": 2, "feedback": ["cite E1"],
             "image_refs": [ImageRef(id="img-1", summary="CR chest")],
             "evidence": [Evidence(id="E1", tool="describe_image", summary="chest",
                                   image_id="img-1")]}
    prompt = build_prompt(state, AgentContext(llm="embedded", checkpoint=None, max_rounds=5))
    assert isinstance(prompt[0], SystemMessage) and isinstance(prompt[-1], HumanMessage)
    system = str(prompt[0].content)
    for part in ("img-1", "E1", "cite E1"):
        assert part in system
    assert prompt[-1].content == "How big is it?" and len(prompt) == 4


def test_an_empty_state_still_reads_as_a_prompt():
    prompt = build_prompt({"messages": []}, AgentContext(llm="embedded", checkpoint=None))
    assert "(none)" in str(prompt[0].content) and "(none yet)" in str(prompt[0].content)
    assert prompt[-1].content == ""


def test_the_prompt_says_what_the_tools_already_answered():
    from agent.planner.prompt import known_calls

    ev = [Evidence(id="E1", tool="describe_image", summary="chest", image_id="img-1"),
          Evidence(id="E2", tool="detect_lesions", summary="failed", image_id="img-1",
                   status="error"),
          Evidence(id="E3", tool="region_stats", summary="mean 3", image_id="img-1"),
          Evidence(id="E4", tool="region_stats", summary="mean 9", image_id="img-1"),
          Evidence(id="E5", tool="report_lookup", summary="reports")]
    known = known_calls(ev)
    assert known.startswith("Already done, the same call gives the same result: ")
    assert "describe_image on img-1 (E1); region_stats on img-1 (E3, E4); report_lookup (E5)" \
        in known
    assert "detect_lesions" not in known  # a failed call answered nothing
    state = {"messages": [HumanMessage(content="q")], "evidence": ev,
             "image_refs": [ImageRef(id="img-1", summary="CR chest")]}
    system = str(build_prompt(state, AgentContext(llm="embedded", checkpoint=None))[0].content)
    assert known in system
    assert known_calls([]) == ""
    empty = build_prompt({"messages": []}, AgentContext(llm="embedded", checkpoint=None))
    assert "Already done" not in str(empty[0].content)
