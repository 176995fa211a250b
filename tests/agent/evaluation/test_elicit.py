"""Elicited confidence: the prompt it renders and the rating it reads back."""

from __future__ import annotations


def test_confidence_prompt_renders():
    from prompts import load_prompt

    text = load_prompt("confidence").render(question="How many?", evidence="E1 (x): 2 found",
                                            answer="2")
    assert "Proposed answer: 2" in text and '{"confidence"' in text


def test_the_rating_is_read_from_a_tool_call_or_json_text_and_clamped():
    from agent.evaluation.elicit import elicit_confidence
    from tests.fakes import ScriptedChatModel, ai, call

    model = ScriptedChatModel.of([ai(call("rate_confidence", confidence=1.7))])
    assert elicit_confidence(model, "How many?", "2", ["E1 (x): 2 found"]) == 1.0
    assert model.bind_kwargs[-1] == {"tool_choice": "rate_confidence"}
    text = ScriptedChatModel.of([ai(content='I would say {"confidence": 0.4}.')])
    assert elicit_confidence(text, "How many?", "2", []) == 0.4
    assert elicit_confidence(ScriptedChatModel.of([ai(content="no idea")]), "q", "a", []) is None
