"""Self-consistency at answer time (agent.trust.consistency), driven by a scripted planner."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from agent import AgentContext, build_graph
from agent.nodes.answer import calibration_name
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.loop_tools import loop_tools

QUESTION = "Is there a nodule in this image?"


@pytest.fixture
def run(store, medloop_home):
    ref = store.put(phantom())
    tools, _ = loop_tools(store)

    def go(samples, n, **kw):
        script = [ai(call("finding", image_id=ref.id, present=True)),
                  final("Yes, a nodule is present.", [("nodule present", ["E1"])], 0.7),
                  *samples]
        model = ScriptedChatModel.of(script)
        ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint="memory",
                           answer_samples=n, **kw)
        result = build_graph(ctx, store=store).invoke({"messages": [("user", QUESTION)], "images": [ref.id]},
                                         config={"configurable": {"thread_id": "t"}})
        return result, model

    return go


def _answer_step(result):
    return next(s for s in result["trace"] if s["step"] == "answer")


def test_sampled_answers_that_disagree_lower_the_confidence(run):
    agree = [final("Yes, there is one.", [("nodule", ["E1"])], 0.7) for _ in range(3)]
    mixed = [final("Yes.", [("nodule", ["E1"])], 0.7),
             final("No nodule is seen.", [("none", ["E1"])], 0.7),
             final("No.", [("none", ["E1"])], 0.7)]
    unanimous, model = run(agree, 3, sample_temperature=0.9)
    split, _ = run(mixed, 3)
    base, _ = run([], 0)

    step = _answer_step(unanimous)
    assert step["agreement"] == 1.0 and len(step["samples"]) == 3
    assert _answer_step(split)["agreement"] == 0.5  # the proposal and one of three samples
    assert "agreement" not in _answer_step(base)
    # Three planner calls at the sampling temperature, offered what the proposal was offered,
    # with tool_choice naming final_answer.
    assert [k.get("temperature") for k in model.call_kwargs] == [None, None, 0.9, 0.9, 0.9]
    assert model.offered[2] == model.offered[1]
    assert [k.get("tool_choice") for k in model.bind_kwargs] == [None, None, "final_answer"]
    c_all, c_split, c_none = (r["answer"].confidence for r in (unanimous, split, base))
    assert c_all > c_none > c_split
    # The answer itself is the accepted proposal, whatever the samples said.
    assert split["answer"].text.startswith("Yes, a nodule is present.")


def test_a_failing_or_empty_sample_is_recorded_and_left_out(run):
    def boom(msgs):
        raise RuntimeError("server went away")

    result, _ = run([boom, AIMessage(content=""), final("Yes.", [("n", ["E1"])], 0.7)], 3)
    step = _answer_step(result)
    assert step["samples"] == ["Yes."] and step["agreement"] == 1.0
    assert any("server went away" in e for e in step["sample_errors"])
    assert any("no answer" in e for e in step["sample_errors"])
    assert result["answer"].findings


def test_sampling_settings_are_checked_and_name_their_own_calibration():
    with pytest.raises(ValueError, match="answer_samples"):
        AgentContext(answer_samples=-1)
    with pytest.raises(ValueError, match="sample_temperature"):
        AgentContext(sample_temperature=0)
    assert calibration_name("embedded") == "embedded-smollm2-135m.json"
    assert calibration_name("embedded", 3) == "embedded-smollm2-135m-sc3.json"
