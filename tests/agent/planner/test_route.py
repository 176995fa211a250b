"""agent.planner.route: the tool router that picks what a small planner is offered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent import AgentContext, build_graph
from agent.evaluation.phantoms import phantom_suite
from agent.planner.route import ToolRouter, route_examples
from agent.planner.toolset import default_tools
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.loop_tools import loop_tools


@pytest.fixture(scope="module")
def default_specs(tmp_path_factory):
    from tools.store import ImageStore

    home = tmp_path_factory.mktemp("route")
    # Without the shipped case library: these questions are about phantoms and the synthetic
    # chest radiograph, where its case_answer is never offered (clinical images only).
    ctx = AgentContext(home=home, checkpoint=None, answers_library="none")
    return [convert_to_openai_tool(t) for t in default_tools(ctx, ImageStore(home / "store"))]


@pytest.fixture(scope="module")
def router():
    return ToolRouter(top_k=1)


def _names(specs):
    return [s["function"]["name"] for s in specs]


def test_every_routing_example_names_a_default_tool(default_specs):
    examples = route_examples()
    # every declared tool has examples; case_answer is declared but offered only over a
    # library of question-answer pairs; ask_image and draft_report only with a VLM (MEDLOOP_VLM),
    # segment_anatomy only with an anatomy model (MEDLOOP_ANATOMY)
    optional = {"ask_image", "draft_report", "segment_anatomy"}
    assert set(examples) - optional == {*_names(default_specs), "case_answer"}
    assert all(len(qs) >= 2 for qs in examples.values())


# Questions written for this test, none of them among the tools' declared examples, with the
# tool that answers each. The five phantom question kinds are among them.
HELD_OUT = {
    "detect_lesions": [*sorted({it.question for it in phantom_suite(5, seed=0)}),
                       "Can you see any masses?", "Are there multiple nodules?",
                       "How large is the biggest nodule?", "Count the lesions.",
                       "Any suspicious spots?"],
    "measure_lungs": ["Does the patient have cardiomegaly?", "What is the CTR?",
                      "Is the cardiac silhouette enlarged?", "What is the total lung area?"],
    "read_text": ["Read the labels on this film.", "What does the annotation say?"],
    "describe_image": ["Describe the image.", "What is the field of view?"],
    "similar_cases": ["Are there similar images in the library?"],
    "report_lookup": ["How do reports describe consolidation?"],
    "measure_distance": ["Measure the distance from (12, 30) to (80, 30)."],
    "find": ["Outline the lungs.", "Where is the right lung?"],
    "classify": ["Which body region does this image show?"],
}


def test_held_out_questions_route_to_the_tool_that_answers_them(default_specs, router):
    misses = []
    for tool, questions in HELD_OUT.items():
        for q in questions:
            offer, scores = router.route(default_specs, q)
            if list(scores) != [tool]:
                misses.append((q, tool, scores))
    assert not misses, misses


def test_follow_up_leans_on_the_previous_question_but_a_new_topic_does_not(
        default_specs, router):
    _, follow = router.route(default_specs, "and how big is it?", "Is there a nodule?")
    assert list(follow) == ["detect_lesions"]
    _, switch = router.route(default_specs, "Is the heart enlarged?", "Is there a nodule?")
    assert list(switch) == ["measure_lungs"]


class _Axes:
    """An embedder that puts each text on a fixed axis: scores are set by hand."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.array([self.vectors.get(t, [0.0, 0.0, 1.0]) for t in texts], np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _spec(name: str, desc: str, *required: str) -> dict:
    props = {k: {"type": "string"} for k in required}
    return {"type": "function", "function": {
        "name": name, "description": desc,
        "parameters": {"type": "object", "properties": props, "required": list(required)}}}


def test_route_keeps_final_answer_and_mask_follow_ups_in_their_order():
    emb = _Axes({"q": [1, 0, 0], "near": [1, 0.2, 0], "close": [1, 0.25, 0],
                 "far": [0, 1, 0]})
    offer = [_spec("far_tool", "far", "image_id"), _spec("measure", "m", "mask_key"),
             _spec("near_tool", "near", "image_id"), _spec("close_tool", "close", "image_id"),
             _spec("final_answer", "answer")]
    one, scores = ToolRouter(top_k=1, embedder=emb).route(offer, "q")
    assert _names(one) == ["measure", "near_tool", "final_answer"]
    assert list(scores) == ["near_tool"]
    two, _ = ToolRouter(top_k=2, margin=0.05, embedder=emb).route(offer, "q")
    assert _names(two) == ["measure", "near_tool", "close_tool", "final_answer"]
    # A second tool far below the best is not offered, whatever top_k allows.
    clear, _ = ToolRouter(top_k=3, margin=0.05, embedder=emb).route(offer, "q")
    assert "far_tool" not in _names(clear)


def test_texts_are_embedded_once_per_router():
    emb = _Axes({"q": [1, 0, 0]})
    router = ToolRouter(embedder=emb)
    offer = [_spec("a", "alpha", "image_id"), _spec("b", "beta", "image_id")]
    router.route(offer, "q")
    router.route(offer, "q")
    router.route(offer, "r")
    assert sum(len(c) for c in emb.calls) == 4  # alpha, beta, q, then only r


def test_nothing_to_choose_leaves_the_offer_alone():
    router = ToolRouter(embedder=_Axes({}))
    only = [_spec("a", "alpha", "image_id"), _spec("final_answer", "answer")]
    assert router.route(only, "q") == (only, {})
    two = [_spec("a", "alpha", "image_id"), _spec("b", "beta", "image_id")]
    assert router.route(two, "   ") == (two, {})
    with pytest.raises(ValueError, match="top_k"):
        ToolRouter(top_k=0)
    with pytest.raises(ValueError, match="route_tools"):
        AgentContext(route_tools=-1)


class _SmallModel(ScriptedChatModel):
    prefers_tool_routing: ClassVar[bool] = True


@pytest.fixture
def graph_for(store, medloop_home):
    ref = store.put(phantom())
    tools, _ = loop_tools(store)

    def make(model_cls, script, **kw):
        model = model_cls.of(script)
        ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint="memory", **kw)
        ctx._store = store
        return build_graph(ctx), model

    return make, ref.id


def _run(graph, question, img):
    return graph.invoke({"messages": [("user", question)], "images": [img]},
                        config={"configurable": {"thread_id": "t"}})


def _script(img):
    return [ai(call("finding", image_id=img, present=True)),
            lambda msgs: final("A nodule is present.", [("nodule found", ["E1"])], 0.8)]


def test_a_planner_that_prefers_routing_is_offered_the_matching_tool(graph_for):
    make, img = graph_for
    graph, model = make(_SmallModel, _script(img))
    result = _run(graph, "Is there a nodule in this image?", img)
    assert _names(model.offered[0]) == ["finding"]  # one tool, no final_answer before evidence
    assert _names(model.offered[1]) == ["finding", "final_answer"]
    think = [s for s in result["trace"] if s["step"] == "think"]
    assert list(think[0]["routed"]) == ["finding"]
    assert result["answer"].findings[0].evidence_ids == ["E1"]


def test_other_planners_see_every_tool_unless_routing_is_asked_for(graph_for):
    make, img = graph_for
    graph, model = make(ScriptedChatModel, _script(img))
    result = _run(graph, "Is there a nodule in this image?", img)
    assert len(model.offered[0]) == 6
    assert all("routed" not in s for s in result["trace"])

    graph, model = make(ScriptedChatModel, _script(img), route_tools=2)
    _run(graph, "Is there a nodule in this image?", img)
    assert "finding" in _names(model.offered[0]) and len(model.offered[0]) <= 2

    graph, model = make(_SmallModel, _script(img), route_tools=0)
    _run(graph, "Is there a nodule in this image?", img)
    assert len(model.offered[0]) == 6


def test_a_failing_router_offers_every_tool_and_says_why(graph_for, monkeypatch):
    import agent.nodes.think as think_mod

    class Broken:
        def route(self, *a, **k):
            raise RuntimeError("embedder missing")

    monkeypatch.setattr(think_mod, "shared_router", lambda top_k: Broken())
    make, img = graph_for
    graph, model = make(_SmallModel, _script(img))
    result = _run(graph, "Is there a nodule in this image?", img)
    assert len(model.offered[0]) == 6
    step = next(s for s in result["trace"] if s["step"] == "think")
    assert "embedder missing" in step["route_error"]
    assert result["answer"].findings


def test_a_tool_marked_outside_its_domain_is_not_ranked_first():
    from agent.planner.offer import OUTSIDE_NOTE
    from agent.planner.route import OUTSIDE_PENALTY

    emb = _Axes({"q": [1, 0, 0], "near": [1, 0.1, 0], "close": [1, 0.5, 0]})
    marked = f"near {OUTSIDE_NOTE} img-1 (validated on phantoms): not findings."
    offer = [_spec("near_tool", marked, "image_id"), _spec("close_tool", "close", "image_id")]
    router = ToolRouter(top_k=1, embedder=emb)
    chosen, scores = router.route(offer, "q")
    assert _names(chosen) == ["close_tool"]
    raw = router.scores([_spec("near_tool", "near", "image_id")], "q")["near_tool"]
    assert router.scores(offer, "q")["near_tool"] == pytest.approx(raw - OUTSIDE_PENALTY)
    assert marked not in router._vectors  # the note is not what is matched


def test_a_lesion_question_on_a_clinical_image_avoids_the_phantom_detector(tmp_path, router):
    """Issue 14: "Do the kidneys appear normal?" on a CT went to detect_lesions (76 blobs)."""
    from agent.planner.offer import offered_tools
    from tools.image import ImageRef
    from tools.store import ImageStore

    ctx = AgentContext(home=tmp_path, checkpoint=None)
    tools = default_tools(ctx, ImageStore(tmp_path / "store"))
    clinical = [ImageRef(id="img-000000000001", modality="CT", source_format="jpeg")]
    offer = offered_tools(tools, clinical, [])
    for q in ("Is there a mass in the liver?", "Do the kidneys appear to be normal?"):
        _, scores = router.route(offer, q)
        assert "detect_lesions" not in scores, (q, scores)
    phantom = [ImageRef(id="img-000000000002", modality="CT", source_format="phantom")]
    _, scores = router.route(offered_tools(tools, phantom, []), "Is there a mass in the liver?")
    assert list(scores) == ["detect_lesions"]


def test_a_backend_is_matched_with_its_own_example_questions(monkeypatch):
    """Backends sharing a name (the classify ones) are matched with their own questions."""
    import agent.planner.route as route_mod
    from agent.planner.toolset import tool_specs

    specs = [s for s in tool_specs() if s.name == "classify" and s.examples]
    assert len({s.description for s in specs}) >= 2
    for spec in specs:
        assert set(route_mod._variant_examples()[(spec.name, spec.description)]) == \
            set(spec.examples)
    # Pooled, another backend's question ("theirs") would match q at ~1.0.
    monkeypatch.setattr(route_mod, "route_examples", lambda: {"classify": ("mine", "theirs")})
    monkeypatch.setattr(route_mod, "_variant_examples", lambda: {("classify", "d"): ("mine",)})
    emb = _Axes({"q": [1, 0, 0], "mine": [0, 1, 0], "theirs": [1, 0.05, 0]})
    scores = ToolRouter(embedder=emb).scores([_spec("classify", "d", "image_id")], "q")
    assert scores["classify"] < 0.5
    # a description declared nowhere (a plugin's) falls back to the pooled questions
    plugin = ToolRouter(embedder=emb).scores([_spec("classify", "new", "image_id")], "q")
    assert plugin["classify"] > 0.9


def test_a_closed_vocabulary_tool_is_routed_only_questions_that_name_it(default_specs, router):
    """The packaged finder grounds the lungs and text: on 640 real items it had been routed
    "Where is the hemorrhage located?" on its example "Where are the lungs?", and all 192
    calls failed."""
    from agent.planner.route import names_a_target

    (find,) = [s for s in default_specs if s["function"]["name"] == "find"]
    for q in ("Where is the hemorrhage located?", "Is there tracheal deviation?",
              "Where is/are the multiple infarcts located?"):
        offer, scores = router.route(default_specs, q)
        assert "find" not in scores and "find" not in _names(offer), (q, scores)
    assert names_a_target(find, "Is the left lung collapsed?")
    assert names_a_target(find, "What does the burned-in text say?")
    assert not names_a_target(find, "Is there a lunge?")  # whole words only
    assert names_a_target(find, "And the other one?", "Where is the right lung?")  # follow-up
    # a tool without a closed vocabulary takes any question
    assert names_a_target(_spec("look", "Look.", "image_id"), "anything")
    # report_lookup: only questions about how reports word a finding (it had been routed
    # "Is the corpus callosum involved?" and answered it from other patients' reports)
    for q in ("Is the corpus callosum involved?", "Is there a pneumothorax?"):
        _, scores = router.route(default_specs, q)
        assert "report_lookup" not in scores, (q, scores)
    _, scores = router.route(default_specs, "How is a pleural effusion usually reported?")
    assert list(scores) == ["report_lookup"]
