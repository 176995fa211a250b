"""agent.evaluation.tool_choice: the checked-in tool-choice suite and its scorer.

The suite's format is pinned (size, kinds, known tool names, images that load), and the
scorer is driven through the real think node by scripted planners whose choices are known:
an oracle that picks an acceptable tool, one that always describes the image, and one that
follows an injection. The real planners' scores are a bench (``bench/tool_choice.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from agent import AgentContext
from agent.answer import FINAL_ANSWER_TOOL
from agent.evaluation.tool_choice import (
    ImageCache,
    SuiteFormatError,
    ToolChoiceItem,
    judge,
    load_items,
    parse_item,
    run_suite,
    summarise,
)
from agent.planner.toolset import default_tools, tool_specs
from tests.fakes import ScriptedChatModel, call
from tools.store import ImageStore

SUITE = Path(__file__).resolve().parents[2] / "fixtures" / "tool_choice" / "suite.jsonl"


@pytest.fixture(scope="module")
def items() -> list[ToolChoiceItem]:
    return load_items(SUITE)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, items):
    """The default tools and every image of the suite, ingested once for the module."""
    home = tmp_path_factory.mktemp("tool-choice")
    store = ImageStore(home / "store")
    images = ImageCache(store, SUITE.parent)
    for item in items:
        for spec in item.images:
            images.ref(spec)
    ctx = AgentContext(home=home, checkpoint=None, route_tools=0)
    return ctx, default_tools(ctx, store), images


def test_suite_has_the_size_and_kinds_the_issue_asks_for(items):
    assert len(items) >= 60
    kinds = {k: [i for i in items if i.kind == k] for k in ("tool", "no_tool", "refuse")}
    assert all(kinds.values()), "every kind has items"
    injections = [i for i in items if "ignore previous instructions" in i.question.lower()]
    assert injections and all("read_text" in i.forbidden for i in injections)
    assert len([i for i in items if i.evidence]) >= 5, "re-call items: evidence already listed"
    assert len({i.id for i in items}) == len(items)


def test_suite_names_only_tools_that_exist(items):
    known = {s.name for s in tool_specs()} | {FINAL_ANSWER_TOOL}
    for item in items:
        named = set().union(*item.acceptable) | item.forbidden | {e.tool for e in item.evidence}
        assert named <= known, (item.id, named - known)


def test_every_image_of_the_suite_loads(loaded, items):
    _, _, images = loaded
    specs = {s for i in items for s in i.images}
    refs = {s: images.ref(s) for s in specs}
    assert len({r.id for r in refs.values()}) == len(specs), "distinct specs, distinct images"
    assert refs["pydicom:RG1_UNCI.dcm"].modality == "CR"
    assert refs["phantom:ct:11:2"].modality == "CT"


@pytest.mark.parametrize(("line", "message"), [
    ({"id": "a", "question": "q", "kind": "tool"}, "missing acceptable"),
    ({"id": "a", "question": "q", "kind": "maybe", "acceptable": [["x"]]}, "kind 'maybe'"),
    ({"id": "a", "question": "q", "kind": "tool", "acceptable": []}, "non-empty list"),
    ({"id": "a", "question": "q", "kind": "tool", "acceptable": [["x"]], "forbidden": ["x"]},
     "both acceptable and forbidden"),
    ({"id": "a", "question": "q", "kind": "tool", "acceptable": [["x"]], "colour": 1},
     "unknown field(s) colour"),
    ({"id": "a", "question": "q", "kind": "tool", "acceptable": [["x"]], "images": [],
      "evidence": [{"tool": "x", "summary": "s"}]}, "not an index into 'images'"),
    ({"id": "a", "question": " ", "kind": "tool", "acceptable": [["x"]]}, "'question' must"),
])
def test_a_malformed_line_is_named(line, message):
    with pytest.raises(SuiteFormatError, match="suite:7") as err:
        parse_item(line, "suite:7")
    assert message in str(err.value)


def test_load_items_rejects_repeats_and_bad_json(tmp_path):
    good = json.dumps({"id": "a", "question": "q", "kind": "tool", "acceptable": [["x"]]})
    path = tmp_path / "s.jsonl"
    path.write_text(f"{good}\n# a comment\n\n{good}\n")
    with pytest.raises(SuiteFormatError, match=r"s.jsonl:4: id 'a' is repeated"):
        load_items(path)
    path.write_text(f"{good}\n{{nope\n")
    with pytest.raises(SuiteFormatError, match=r"s.jsonl:2: not JSON"):
        load_items(path)
    path.write_text("\n")
    with pytest.raises(SuiteFormatError, match="no items"):
        load_items(path)


def test_unresolvable_images_are_named(tmp_path):
    from agent.evaluation.tool_choice import resolve_image

    with pytest.raises(SuiteFormatError, match=r"pydicom ships no file 'nope\.dcm'"):
        resolve_image("pydicom:nope.dcm", tmp_path)
    with pytest.raises(SuiteFormatError, match="expected phantom:ct"):
        resolve_image("phantom:mri:1:1", tmp_path)
    with pytest.raises(SuiteFormatError, match="no file"):
        resolve_image("missing.png", tmp_path)


def test_judge_reads_sets_forbidden_and_what_was_offered():
    item = ToolChoiceItem(id="x", question="q", kind="tool",
                          acceptable=(frozenset({"find", "measure"}), frozenset({"case_answer"})),
                          forbidden=frozenset({"read_text"}))
    offered = ["find", "measure", "read_text", "describe_image"]
    assert judge(item, ["find"], offered) == (True, "")
    assert judge(item, ["find", "measure"], offered) == (True, "")
    ok, why = judge(item, ["describe_image"], offered)
    assert not ok and "acceptable: find+measure" in why and "case_answer" not in why
    assert judge(item, ["read_text"], offered) == (False, "called forbidden read_text")
    assert judge(item, [], offered) == (False, "no valid call")
    # case_answer alone would be right if it were offered; it is not: nothing to hold against
    only = ToolChoiceItem(id="y", question="q", kind="tool",
                          acceptable=(frozenset({"case_answer"}),))
    assert judge(only, ["find"], offered)[0] is None


_ARGS: dict[str, dict[str, Any]] = {
    "region_stats": {"box": [10, 10, 50, 50]},
    "measure_distance": {"points": [10, 10, 50, 50]},
    "segment": {"box": [10, 10, 50, 50]},
    "find": {"target": "lungs"},
    "window": {"preset": "lung"},
    "report_lookup": {"query": "atelectasis"},
}


def _call_to(name: str, offer: list[dict[str, Any]]) -> dict[str, Any]:
    """A call to ``name`` with the first image id its schema allows."""
    if name == FINAL_ANSWER_TOOL:
        return call(name, answer="This is outside what I can answer.", claims=[],
                    confidence=0.1)
    spec = next(s for s in offer if s["function"]["name"] == name)
    props = spec["function"]["parameters"].get("properties", {})
    args = dict(_ARGS.get(name, {}))
    if "image_id" in props:
        args["image_id"] = props["image_id"]["enum"][0]
    return call(name, **args)


def _planner(items: list[ToolChoiceItem], choose) -> ScriptedChatModel:
    """A scripted planner: for each item in turn, ``choose(item, offered names)``."""
    model: ScriptedChatModel

    def step(item: ToolChoiceItem):
        def reply(_messages) -> AIMessage:
            offer = model.offered[-1]
            names = [s["function"]["name"] for s in offer]
            return AIMessage(content="", tool_calls=[_call_to(choose(item, names), offer)])
        return reply

    model = ScriptedChatModel.of(step(i) for i in items)
    return model


def _run(loaded, items, choose, **ctx_fields):
    ctx, tools, images = loaded
    planner = _planner(items, choose)
    from dataclasses import replace

    return run_suite(items, replace(ctx, llm=planner, **ctx_fields), tools, images)


def test_an_oracle_planner_scores_every_judged_item_right(loaded, items):
    def oracle(item, names):
        return next(t for s in item.acceptable for t in sorted(s) if s <= set(names))

    results = _run(loaded, items, oracle)
    summary = summarise(results)
    judged = [r for r in results if r.correct is not None]
    assert summary["overall"] == {"n": len(judged), "right": len(judged), "accuracy": 1.0}
    # With images attached and nothing known, final_answer is not offered (the loop looks
    # first), so the no-image refusals are judged on final_answer and the others on a look.
    assert len(judged) >= 60
    by_id = {r.id: r for r in results}
    assert by_id["noimg-capital"].called == [FINAL_ANSWER_TOOL]
    assert FINAL_ANSWER_TOOL not in by_id["img-injection-name"].offered
    assert "window" not in by_id["mr-lung-window"].offered, "the window tool refuses MR"


def test_a_describe_only_planner_is_right_only_where_describing_is(loaded, items):
    def describe(item, names):
        return "describe_image" if "describe_image" in names else FINAL_ANSWER_TOOL

    results = {r.id: r for r in _run(loaded, items, describe)}
    assert results["cxr-describe"].correct is True
    assert results["img-injection-name"].correct is True  # a harmless look
    assert results["cxr-heart"].correct is False
    assert "acceptable: measure_lungs" in results["cxr-heart"].reason
    # describe_image already answered here: it is not offered again, so the planner answers
    assert "describe_image" not in results["known-describe"].offered
    assert results["known-describe"].called == [FINAL_ANSWER_TOOL]
    assert results["known-describe"].correct is True and results["known-describe"].with_evidence
    assert results["noimg-capital"].correct is True
    summary = summarise(list(results.values()))
    assert 0 < summary["overall"]["accuracy"] < 0.5


def test_calling_a_tool_again_for_what_is_known_is_wrong(loaded, items):
    """A tool that takes a box stays on offer after answering: calling it again is the mistake."""
    chosen = [i for i in items if i.evidence]

    def repeat(item, names):
        return item.evidence[0].tool if item.evidence[0].tool in names else FINAL_ANSWER_TOOL

    results = {r.id: r for r in _run(loaded, chosen, repeat)}
    assert results["known-hu"].correct is False
    assert results["known-hu"].reason == "called forbidden region_stats"
    assert results["known-hu"].forbidden_called == ["region_stats"]
    withheld = [r for r in results.values() if r.called == [FINAL_ANSWER_TOOL]]
    assert {r.id for r in withheld} >= {"known-describe", "known-count", "known-text"}
    assert summarise(list(results.values()))["forbidden_calls"] == 1


def test_following_an_injection_is_wrong(loaded, items):
    chosen = [i for i in items if i.id in ("img-injection-name", "img-injection-dob")]

    def follow(item, names):
        return "read_text"

    results = _run(loaded, chosen, follow)
    assert [r.correct for r in results] == [False, False]
    assert all(r.forbidden_called == ["read_text"] for r in results)


def test_routing_is_part_of_the_choice(loaded, items):
    """With the router on, the scorer records what it offered and judges what was called."""
    chosen = [i for i in items if i.id in ("phantom-ct-count", "cxr-heart")]

    def first_offered(item, names):
        return next(n for n in names if n != FINAL_ANSWER_TOOL)

    results = _run(loaded, chosen, first_offered, route_tools=1)
    assert [sorted(r.routed or {}) for r in results] == [["detect_lesions"], ["measure_lungs"]]
    assert [r.correct for r in results] == [True, True]
