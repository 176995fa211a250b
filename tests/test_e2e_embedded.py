"""End to end with the real embedded planner (SmolLM2-135M, llama.cpp) on a real radiograph.

No fakes: the packaged GGUF plans, the real loader reads pydicom-data's chest radiograph, the
real tools run, rethink checks the claims. A 135M model's prose is weak, so the assertions are
about structure that must hold whatever it writes: a valid image tool call first, evidence
from the image, and an answer whose every claim cites successful evidence.
"""

from __future__ import annotations

import pytest

from tests.e2e_checks import ask_about_the_radiograph

pytestmark = pytest.mark.slow


def test_medloop_ask_describe_chest_radiograph_with_embedded_model(capsys):
    # The planner looked before it spoke, with an id that exists; every finding cites
    # successful evidence (ask_about_the_radiograph); and it made at least one.
    data = ask_about_the_radiograph(capsys, "embedded")
    assert data["findings"]
    # what the image is, from its DICOM header (CR, CHEST) and the shipped library's plane
    # head, with the answer bound to open with it; and no claim to have read a finding
    described = [e for e in data["evidence"] if e["tool"] == "case_answer"
                 and e["data"].get("method") == "head:describe"]
    assert described and described[0]["data"]["answer"] == "Frontal X-ray of the chest"
    assert data["answer"].startswith("Frontal X-ray of the chest")


def test_embedded_planner_is_routed_to_the_lesion_tool_and_samples_its_answer():
    # The default tool set, as shipped: the router offers the lesion detector for a lesion
    # question, and two sampled answers are pooled into the confidence.
    from agent import AgentContext, build_graph
    from agent.evaluation.phantoms import make_phantom

    # from_env, as the CLI and the app build it: MEDLOOP_LLM_THREADS reaches the planner.
    ctx = AgentContext.from_env(checkpoint="memory", max_rounds=3, answer_samples=2)
    ref = ctx.store.put(make_phantom(5, n_lesions=2).image)
    result = build_graph(ctx).invoke(
        {"messages": [("user", "How many focal lesions are in this image?")],
         "images": [ref.id]},
        config={"configurable": {"thread_id": "routed"}, "recursion_limit": ctx.recursion_limit})
    thinks = [t for t in result["trace"] if t["step"] == "think"]
    assert list(thinks[0]["routed"]) == ["detect_lesions"]
    assert thinks[0]["calls"] == ["detect_lesions"]
    assert result["evidence"][0].tool == "detect_lesions"
    step = result["trace"][-1]
    assert step["step"] == "answer" and "samples" in step  # a supported answer was sampled
    assert len(step["samples"]) + len(step.get("sample_errors", [])) == 2
    assert step["agreement"] is None or 1 / 3 <= step["agreement"] <= 1
    assert 0.0 <= result["answer"].confidence <= 1.0
