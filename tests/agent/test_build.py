"""The think → act → rethink → answer loop, driven by a scripted tool-calling model."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from agent import AgentContext, Answer, build_graph
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.loop_tools import loop_tools


@pytest.fixture
def setup(store, medloop_home):
    ref = store.put(phantom())
    tools, intervals = loop_tools(store, hang_s=5.0)

    def make(script, **kw):
        model = ScriptedChatModel.of(script)
        ctx = AgentContext(
            llm=model,
            tools=tools,
            home=medloop_home,
            checkpoint=kw.pop("checkpoint", "memory"),
            **kw,
        )
        ctx._store = store
        return build_graph(ctx), model

    return make, ref.id, intervals


def run(graph, question, images, thread="t1"):
    return graph.invoke(
        {"messages": [("user", question)], "images": images},
        config={"configurable": {"thread_id": thread}},
    )


def tool_messages(result):
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def test_happy_path_answer_cites_evidence(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("mean_intensity", image_id=img)),
            lambda msgs: final(
                "The mean intensity is reported.", [("mean intensity measured", ["E1"])], 0.9
            ),
        ]
    )
    result = run(graph, "What is the mean intensity?", [img])
    answer = result["answer"]
    assert isinstance(answer, Answer)
    assert [c.evidence_ids for c in answer.findings] == [["E1"]]
    assert not answer.abstained and 0.5 < answer.confidence <= 1.0
    assert result["evidence"][0].tool == "mean_intensity" and result["evidence"][0].status == "ok"
    # the second planner call saw the evidence in its prompt
    assert "E1 (mean_intensity)" in model.seen[1][0].content
    # the image id was offered as the only allowed value
    schema = {t["function"]["name"]: t for t in model.offered[0]}
    assert schema["mean_intensity"]["function"]["parameters"]["properties"]["image_id"]["enum"] == [
        img
    ]
    # final_answer is withheld until there is evidence
    assert "final_answer" not in schema
    assert "final_answer" in {t["function"]["name"] for t in model.offered[1]}


def test_tool_error_reaches_model_and_it_recovers(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("broken", image_id=img)),
            ai(call("bright_area", image_id=img, threshold=-1)),
            ai(call("bright_area", image_id=img, threshold=50)),
            final("A bright region of 80 mm2.", [("bright area 80 mm2", ["E3"])]),
        ]
    )
    result = run(graph, "How big is the bright region?", [img])
    ev = result["evidence"]
    assert [e.status for e in ev] == ["error", "error", "ok"]
    assert "model weights missing" in ev[0].summary
    assert "threshold must be positive" in ev[1].summary and "call again" in ev[1].summary
    assert ev[2].measurements[0].value == pytest.approx(16 * 20 * 0.25)
    assert "[FAILED]" in model.seen[1][0].content and "weights missing" in model.seen[1][0].content
    statuses = [m.status for m in tool_messages(result)]
    assert statuses[:3] == ["error", "error", "success"]
    assert result["answer"].findings[0].evidence_ids == ["E3"]


def test_bad_argument_types_are_explained(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("bright_area", image_id=img, threshold="high")),
            ai(call("mean_intensity", image_id=img)),
            final("done", [("mean measured", ["E2"])]),
        ]
    )
    result = run(graph, "q", [img])
    assert "threshold" in result["evidence"][0].summary
    assert result["evidence"][0].status == "error"


def test_unknown_tool_lists_available(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("segment_heart", image_id=img)),
            ai(call("mean_intensity", image_id=img)),
            final("ok", [("mean measured", ["E2"])]),
        ]
    )
    result = run(graph, "q", [img])
    first = result["evidence"][0]
    assert first.status == "error" and "unknown tool 'segment_heart'" in first.summary
    assert "mean_intensity" in first.summary


def test_malformed_json_tool_call_in_text_is_repaired(setup):
    make, img, _ = setup
    text = f"I will look.\n```json\n{{'tool': 'mean_intensity', 'arguments': {{'image_id': '{img}',}},}}\n```"
    graph, model = make(
        [
            AIMessage(content=text),
            final("ok", [("mean measured", ["E1"])]),
        ]
    )
    result = run(graph, "q", [img])
    assert result["evidence"][0].tool == "mean_intensity" and result["evidence"][0].status == "ok"


def test_unrepairable_call_is_reasked(setup):
    make, img, _ = setup
    graph, model = make(
        [
            AIMessage(
                content='{"tool": "mean_intensity", "arguments": {"image_id": "img-nothere00000"}}'
            ),
            ai(call("mean_intensity", image_id=img)),
            final("ok", [("mean measured", ["E1"])]),
        ]
    )
    result = run(graph, "q", [img])
    # the invalid call was sent back as feedback, not executed
    assert "malformed" in model.seen[1][0].content
    assert len(result["evidence"]) == 1 and result["evidence"][0].status == "ok"


def test_parallel_calls_overlap(setup):
    make, img, intervals = setup
    graph, model = make(
        [
            ai(
                call("slow", image_id=img),
                call("bright_area", image_id=img, threshold=50),
                call("mean_intensity", image_id=img),
            ),
            final("ok", [("mean measured", ["E3"])]),
        ]
    )
    # Two distinct slow calls can't have identical args; run slow twice on two images instead.
    result = run(graph, "q", [img])
    assert [e.tool for e in result["evidence"]] == ["slow", "bright_area", "mean_intensity"]


def test_parallel_slow_calls_run_concurrently(setup, store):
    make, img, intervals = setup
    img2 = store.put(phantom(seed=1)).id
    graph, model = make(
        [
            ai(call("slow", image_id=img), call("slow", image_id=img2)),
            final("ok", [("slow done", ["E1", "E2"])]),
        ]
    )
    result = run(graph, "q", [img, img2])
    assert len(intervals) == 2
    (_, s1, e1), (_, s2, e2) = intervals
    assert max(s1, s2) < min(e1, e2), "the two calls did not overlap in time"
    assert [e.id for e in result["evidence"]] == ["E1", "E2"]


def test_rethink_sends_back_unsupported_claim(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("mean_intensity", image_id=img)),
            final("There is a 12 mm nodule.", [("a 12 mm nodule", ["E1"]), ("heart enlarged", [])]),
            ai(call("bright_area", image_id=img, threshold=50)),
            final("Bright area 80 mm2.", [("bright area 80 mm2", ["E2"])]),
        ]
    )
    result = run(graph, "q", [img])
    feedback = model.seen[2][0].content
    assert "states 12, which E1 do not contain" in feedback
    assert "'heart enlarged' cites no evidence" in feedback
    assert result["answer"].findings[0].statement == "bright area 80 mm2"
    steps = [t["step"] for t in result["trace"]]
    assert steps.count("rethink") == 2


def test_contradictions_are_named_and_lower_confidence(setup):
    make, img, _ = setup
    graph, _ = make(
        [
            ai(
                call("finding", image_id=img, present=True),
                call("finding", image_id=img, present=False),
            ),
            final("Unclear.", [("nodule present", ["E1"])], confidence=0.9),
        ]
    )
    result = run(graph, "Is there a nodule?", [img])
    ans = result["answer"]
    assert (
        len(ans.contradictions) == 1
        and "E1" in ans.contradictions[0]
        and "E2" in ans.contradictions[0]
    )
    graph2, _ = make(
        [
            ai(call("finding", image_id=img, present=True)),
            final("Unclear.", [("nodule present", ["E1"])], confidence=0.9),
        ]
    )
    agree = run(graph2, "Is there a nodule?", [img], thread="t2")["answer"]
    assert ans.confidence < agree.confidence


def test_never_stopping_model_is_cut_off_by_budget(setup, store):
    make, img, _ = setup
    n = iter(range(1, 10_000))
    graph, model = make(
        (ai(call("bright_area", image_id=img, threshold=float(next(n)))) for _ in iter(int, 1)),
        max_rounds=3,
    )
    result = run(graph, "q", [img])
    ans = result["answer"]
    assert ans.budget_exhausted and ans.abstained
    assert len(model.seen) == 3
    assert [c.evidence_ids for c in ans.findings] == [["E1"], ["E2"], ["E3"]]
    assert "budget" in ans.text


def test_hanging_tool_is_timed_out(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("hangs", image_id=img), call("mean_intensity", image_id=img)),
            final("ok", [("mean measured", ["E2"])]),
        ],
        tool_timeout_s=0.5,
    )
    result = run(graph, "q", [img])
    hung, ok = result["evidence"]
    assert hung.status == "error" and "timed out after 0.5 s" in hung.summary
    assert ok.status == "ok"


def test_repeated_call_is_not_rerun(setup):
    make, img, _ = setup
    graph, model = make(
        [
            ai(call("mean_intensity", image_id=img)),
            ai(call("mean_intensity", image_id=img)),
            final("ok", [("mean measured", ["E1"])]),
        ]
    )
    result = run(graph, "q", [img])
    assert "already done: see E1" in result["evidence"][1].summary


def test_plain_text_answer_is_asked_for_evidence(setup):
    make, img, _ = setup
    graph, model = make(
        [
            AIMessage(content="It looks normal."),
            ai(call("mean_intensity", image_id=img)),
            final("ok", [("mean measured", ["E1"])]),
        ]
    )
    result = run(graph, "q", [img])
    assert "no evidence yet" in model.seen[1][0].content
    assert not result["answer"].abstained


def test_multi_turn_memory_and_thread_isolation(setup, store):
    make, img, _ = setup
    img2 = store.put(phantom(seed=3, value=200)).id
    script = [
        ai(call("mean_intensity", image_id=img)),
        final("first", [("mean measured", ["E1"])]),
        ai(call("mean_intensity", image_id=img2)),
        final("other", [("mean measured", ["E1"])]),
        lambda msgs: final("again", [("mean measured", ["E1"])]),
    ]
    graph, model = make(script, checkpoint="sqlite")
    run(graph, "Question one?", [img], thread="a")
    run(graph, "Question for b?", [img2], thread="b")
    r = graph.invoke(
        {"messages": [("user", "And a follow-up?")]}, config={"configurable": {"thread_id": "a"}}
    )
    prompt = model.seen[-1]
    text = "\n".join(str(m.content) for m in prompt)
    assert "Question one?" in text and "first" in text
    assert "Question for b?" not in text and img2 not in text
    assert [r_.id for r_ in r["image_refs"]] == [img]
    assert r["turn"] == 2 and r["answer"].text == "again"
