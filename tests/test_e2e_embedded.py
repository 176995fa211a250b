"""End to end with the real embedded planner (SmolLM2-135M, llama.cpp) on a real radiograph.

No fakes: the packaged GGUF plans, the real loader reads pydicom-data's chest radiograph, the
real tools run, rethink checks the claims. A 135M model's prose is weak, so the assertions are
about structure that must hold whatever it writes: a valid image tool call first, evidence
from the image, and an answer whose every claim cites successful evidence.
"""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from agent.cli.main import main

pytestmark = pytest.mark.slow


def test_medloop_ask_describe_chest_radiograph_with_embedded_model(capsys):
    rg1 = get_testdata_file("RG1_UNCI.dcm")
    code = main(["ask", rg1, "Describe this image", "--json", "--llm", "embedded",
                 "--checkpoint", "memory"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    image_id = data["images"][0]["id"]
    evidence = {e["id"]: e for e in data["evidence"]}
    thinks = [t for t in data["trace"] if t["step"] == "think"]
    acts = [t for t in data["trace"] if t["step"] == "act"]
    # The planner looked before it spoke, with an id that exists.
    assert thinks[0]["calls"] and thinks[0]["calls"][0] != "final_answer"
    assert acts and acts[0]["args"]["image_id"] == image_id
    assert any(e["status"] == "ok" and e["image_id"] == image_id for e in evidence.values())
    # A validated answer: every finding cites successful evidence; confidence is a probability.
    assert data["answer"].strip()
    assert data["findings"]
    for f in data["findings"]:
        assert f["evidence_ids"] and all(evidence[i]["status"] == "ok" for i in f["evidence_ids"])
    assert 0.0 <= data["confidence"] <= 1.0
    assert data["trace"][-1]["step"] == "answer"


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
