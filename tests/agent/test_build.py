"""The think → act → rethink → answer loop, driven by a scripted tool-calling model."""

from __future__ import annotations

import re

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
            raise_tool_errors=kw.pop("raise_tool_errors", True),  # a bug in a tool fails here
            **kw,
        )
        return build_graph(ctx, store=store), model

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


# ------------------------------------------------------------ errors at the right tier
def _extra_tool(name, exc):
    from tools.base import ImageArgs, make_tool

    def run(a: ImageArgs):
        raise exc

    return make_tool(run, name=name, description=f"{name} tool.", args_schema=ImageArgs)


def _graph_with(store, medloop_home, tool, script, **kw):
    ctx = AgentContext(llm=ScriptedChatModel.of(script), tools=[tool], home=medloop_home,
                       checkpoint="memory", max_rounds=2, **kw)
    return build_graph(ctx, store=store)


def test_a_bug_in_a_tool_is_logged_with_its_traceback(store, medloop_home, caplog):
    img = store.put(phantom()).id
    buggy = _extra_tool("buggy", ZeroDivisionError("division by zero"))
    script = [ai(call("buggy", image_id=img)), final("Cannot tell.", [], 0.2)]
    with caplog.at_level("ERROR", logger="medloop.tools"):
        result = run(_graph_with(store, medloop_home, buggy, script), "q?", [img])
    assert "buggy crashed (ZeroDivisionError" in result["evidence"][0].summary
    rec = next(r for r in caplog.records if r.name == "medloop.tools")
    assert "buggy crashed" in rec.getMessage() and rec.exc_info[0] is ZeroDivisionError


def test_raise_tool_errors_lets_a_bug_fail_the_run(store, medloop_home):
    img = store.put(phantom()).id
    buggy = _extra_tool("buggy", ZeroDivisionError("division by zero"))
    graph = _graph_with(store, medloop_home, buggy, [ai(call("buggy", image_id=img))],
                        raise_tool_errors=True)
    with pytest.raises(ZeroDivisionError):
        run(graph, "q?", [img])
    # Named errors are outcomes, not bugs: they still go back to the planner.
    from tools.errors import ToolFailure

    broken = _extra_tool("broken", ToolFailure("weights missing"))
    script = [ai(call("broken", image_id=img)), final("Cannot tell.", [], 0.2)]
    result = run(_graph_with(store, medloop_home, broken, script, raise_tool_errors=True),
                 "q?", [img])
    assert result["evidence"][0].summary.startswith("broken failed: weights missing")


def test_a_resource_still_being_prepared_is_its_own_kind_of_error(store, medloop_home):
    from tools.errors import ResourceNotReady

    img = store.put(phantom()).id
    waiting = _extra_tool("similar", ResourceNotReady("the case library is being built"))
    script = [ai(call("similar", image_id=img)), final("Cannot tell.", [], 0.2)]
    result = run(_graph_with(store, medloop_home, waiting, script), "q?", [img])
    summary = result["evidence"][0].summary
    assert summary == "similar is not ready yet: the case library is being built"
    assert "bad arguments" not in summary


# ------------------------------------------------------------ meaning checked against evidence
def test_an_answer_against_its_evidence_is_sent_back_then_abstains(setup):
    make, img, _ = setup
    wrong = final("No, there is no nodule.", [("nodule finding reported", ["E1"])], 0.9)
    graph, model = make([ai(call("finding", image_id=img, present=True)), wrong, wrong],
                        max_rounds=3)
    result = run(graph, "Is there a nodule?", [img])
    rethinks = [t for t in result["trace"] if t["step"] == "rethink"]
    assert rethinks[0]["decision"] == "think"
    assert any("says there is no lesion, but E1 (finding) reports nodule present" in p
               for p in rethinks[0]["problems"])
    # the planner was told the conflict in words
    assert "reports nodule present" in " ".join(str(m.content) for m in model.seen[2])
    answer = result["answer"]
    assert answer.abstained and answer.conflicts
    assert "contradicted its own evidence" in answer.text
    step = next(t for t in result["trace"] if t["step"] == "answer")
    assert step["conflicts"] == answer.conflicts


def test_a_conflict_repeated_after_it_was_named_abstains_without_spending_the_budget(setup):
    make, img, _ = setup
    wrong = final("No, there is no nodule.", [("nodule finding reported", ["E1"])], 0.9)
    graph, model = make([ai(call("finding", image_id=img, present=True)), wrong, wrong, wrong,
                         wrong], max_rounds=5)
    result = run(graph, "Is there a nodule?", [img])
    thinks = [t for t in result["trace"] if t["step"] == "think"]
    rethinks = [t for t in result["trace"] if t["step"] == "rethink"]
    assert len(thinks) == 3 and [r["decision"] for r in rethinks] == ["think", "answer"]
    assert result["answer"].abstained and result["answer"].conflicts


def test_an_unsupported_answer_proposed_again_unmended_stops_the_loop(setup):
    """SmolLM2 proposed the same unsupported number five times, spending the whole budget."""
    make, img, _ = setup
    made_up = final("The mean is 999.", [("the mean is 999", ["E1"])], 0.9)
    graph, model = make([ai(call("mean_intensity", image_id=img)), made_up, made_up, made_up,
                         made_up], max_rounds=5)
    result = run(graph, "What is the mean intensity?", [img])
    thinks = [t for t in result["trace"] if t["step"] == "think"]
    rethinks = [t for t in result["trace"] if t["step"] == "rethink"]
    assert len(thinks) == 3 and [r["decision"] for r in rethinks] == ["think", "answer"]
    assert rethinks[0]["problems"] == rethinks[1]["problems"]  # named once, not mended
    answer = result["answer"]
    assert answer.abstained and "999" not in answer.text
    assert not answer.budget_exhausted and "budget" not in answer.text  # it was not spent


def test_a_claim_sent_back_again_with_more_stray_numbers_is_a_repeat(setup):
    """SmolLM2 copied the feedback ("... states 1, 1, 1, which E1 do not contain") into its
    next claim, each round with more numbers, so no two rounds' problems were equal: five
    calls on a dev item. The same claim rejected again for stray numbers stops the loop."""
    make, img, _ = setup
    lead = "The weighting is 1.0000000000000001, the weighting is 1.0000000000000001, the we"
    growing = [final(f"{lead} states {', '.join(['1'] * n)}", [
        (f"{lead} states {', '.join(['1'] * n)}", ["E1"])], 0.5) for n in (4, 8, 12, 16)]
    graph, _ = make([ai(call("mean_intensity", image_id=img)), *growing], max_rounds=5)
    result = run(graph, "What is the MR weighting in this image?", [img])
    rethinks = [t for t in result["trace"] if t["step"] == "rethink"]
    assert [r["decision"] for r in rethinks] == ["think", "answer"]
    assert rethinks[0]["problems"] != rethinks[1]["problems"]  # the numbers differ
    assert result["answer"].abstained and not result["answer"].budget_exhausted
    # a different claim is a different problem: it is named, not taken for a repeat
    other = final("The mean is 999.", [("the mean is 999", ["E1"])], 0.9)
    graph, _ = make([ai(call("mean_intensity", image_id=img)), growing[0], other, other],
                    max_rounds=5)
    rethinks = [t for t in run(graph, "What is the mean intensity?", [img])["trace"]
                if t["step"] == "rethink"]
    assert [r["decision"] for r in rethinks] == ["think", "think", "answer"]


def test_an_answer_that_agrees_is_accepted(setup):
    make, img, _ = setup
    graph, _ = make([ai(call("finding", image_id=img, present=True)),
                     final("Yes, there is a nodule.", [("nodule present", ["E1"])], 0.8)])
    answer = run(graph, "Is there a nodule?", [img])["answer"]
    assert not answer.abstained and answer.conflicts == []


# ------------------------------------------------------------ build-time objects
def test_build_graph_takes_the_store_tools_and_a_ready_model(store, medloop_home):
    img = store.put(phantom()).id
    tools, _ = loop_tools(store)
    model = ScriptedChatModel.of([ai(call("mean_intensity", image_id=img)),
                                  final("Mean reported.", [("mean intensity", ["E1"])], 0.9)])
    ctx = AgentContext(llm="embedded", home=medloop_home, checkpoint="memory")
    graph = build_graph(ctx, store=store, tools=tools[:1], llm=model)
    result = run(graph, "What is the mean?", [img])
    assert result["evidence"][0].tool == "mean_intensity"  # the given tool, the given model
    assert [t["function"]["name"] for t in model.offered[0]] == ["mean_intensity"]
    assert ctx.llm == "embedded"  # the caller's context is not modified


def test_an_image_a_tool_stores_joins_the_conversation(store, medloop_home):
    from pydicom.data import get_testdata_file

    from tools.ingest.loader import load_image
    from tools.spec import ToolDeps
    from tools.vision.basic import basic_tools
    from tools.vision.window import TOOLS as WINDOW

    ct = store.put(load_image(get_testdata_file("CT_small.dcm"))).id
    tools = [WINDOW[0].tool(ToolDeps(store)),
             *[t for t in basic_tools(store) if t.name == "describe_image"]]

    def describe_the_new_one(msgs):
        new_id = re.search(r"The re-windowed image is (img-[0-9a-f]{12})", str(msgs)).group(1)
        return ai(call("describe_image", image_id=new_id))

    model = ScriptedChatModel.of([ai(call("window", image_id=ct, preset="lung")),
                                  describe_the_new_one,
                                  final("Windowed.", [("lung window applied", ["E1"])], 0.8)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint="memory")
    result = run(build_graph(ctx, store=store), "Show the lungs.", [ct])
    new_id = result["evidence"][0].new_image_ids[0]
    assert [r.id for r in result["image_refs"]] == [ct, new_id]
    enum = {t["function"]["name"]: t for t in model.offered[1]}["describe_image"]
    assert enum["function"]["parameters"]["properties"]["image_id"]["enum"] == [ct, new_id]
    assert result["evidence"][1].status == "ok" and result["evidence"][1].image_id == new_id


def test_a_phantom_calibration_is_never_applied_to_a_clinical_image(store, medloop_home, tmp_path):
    import dataclasses

    from agent.trust.calibration import Calibration, save_calibration

    tools, _ = loop_tools(store)
    squash = save_calibration(Calibration("temperature", {"T": 4.0}, domain="phantom"),
                              tmp_path / "phantom-map.json")
    clinical = store.put(phantom()).id  # a synthetic test image, but not a medloop phantom
    marked = store.put(dataclasses.replace(phantom(seed=1), source_format="phantom")).id

    def ask(image):
        model = ScriptedChatModel.of([ai(call("mean_intensity", image_id=image)),
                                      final("Mean reported.", [("mean intensity", ["E1"])], 0.9)])
        ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint="memory",
                           calibration=str(squash))
        return run(build_graph(ctx, store=store), "What is the mean?", [image])

    on_clinical, on_phantom = ask(clinical), ask(marked)
    step = next(t for t in on_clinical["trace"] if t["step"] == "answer")
    assert step["domain"] == "clinical" and step["calibration"] is None
    assert on_clinical["answer"].confidence == step["raw_confidence"]
    assert "uncalibrated for clinical images" in " ".join(on_clinical["answer"].notes)
    step = next(t for t in on_phantom["trace"] if t["step"] == "answer")
    assert step["domain"] == "phantom" and step["calibration"] == "temperature"
    assert on_phantom["answer"].confidence < step["raw_confidence"]  # T=4 pulls towards 0.5
