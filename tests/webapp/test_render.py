"""webapp.render: the overlay, the similar-cases gallery, the trace and the answer, as the page
receives them (no browser, no graph)."""

from __future__ import annotations

import gradio as gr
import numpy as np
from langchain_core.messages import HumanMessage

from agent.answer import Answer, Claim
from tests.fakes import ai, call
from tests.webapp.helpers import bare_context, png
from tools.evidence import Box, Evidence, Measurement
from tools.ingest.loader import load_image
from webapp import render


def test_overlay_draws_masks_boxes_and_lines(tmp_path, store):
    img = load_image(png(tmp_path / "sq.png"))
    ref = store.put(img)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    ctx = bare_context(tmp_path, store)
    ev = [
        Evidence(id="E1", tool="segment", image_id=ref.id, summary="s",
                 boxes=[Box(xyxy=(16, 16, 48, 48), label="square")],
                 mask_keys=[store.put_array(mask)]),
        Evidence(id="E2", tool="measure", image_id=ref.id, summary="d",
                 measurements=[Measurement(name="d", value=32, unit="px", line=(5, 60, 60, 60))]),
        Evidence(id="E3", tool="segment", image_id=ref.id, summary="wrong size",
                 mask_keys=[store.put_array(np.ones((8, 8), bool))]),
        Evidence(id="E4", tool="x", status="error", image_id=ref.id, summary="failed",
                 boxes=[Box(xyxy=(0, 0, 8, 8))]),
    ]
    base, notes = render.evidence_overlay(ctx, ev, [ref.id])
    assert [label for _, label in notes] == ["E1 segment square", "E1 square"]
    assert notes[0][0][20, 20] > 0 and notes[0][0][2, 2] == 0  # mask layer
    outline = notes[1][0]
    assert outline[16, 30] == 1 and outline[30, 30] == 0  # box drawn as an outline only
    grey = img.display[60, 30]
    assert not (base[60, 30] == grey).all()  # the measurement line is drawn into the picture
    assert set(render.overlay_colours(notes)) == {"E1 segment square", "E1 square"}
    small, layers = render.shrink(np.zeros((2000, 1000, 3), np.uint8),
                                  [(np.ones((2000, 1000)), "a")], longest=500)
    assert small.shape == (500, 250, 3) and layers[0][0].shape == (500, 250)
    shown = render.overlay_value(ctx, ev, [ref.id])
    assert isinstance(shown, gr.AnnotatedImage)
    assert render.overlay_value(ctx, [], []) is None  # nothing to draw on yet


def test_similar_cases_render_as_gallery_with_reports(tmp_path, store):
    thumb = store.put_array(np.full((32, 32), 90, np.uint8))  # grey, as the library stores them
    ev = Evidence(id="E5", tool="similar_cases", summary="3 similar",
                  data={"cases": [{"case_id": "c1", "score": 0.91, "report": "Cardiomegaly.",
                                   "labels": ["cardiomegaly"], "thumbnail_key": thumb},
                                  {"case_id": "c2", "report": "no thumbnail"}, "not a case"]})
    cases = render.similar_cases(bare_context(tmp_path, store), [ev])
    assert len(cases) == 1
    assert cases[0][0].shape == (32, 32)
    assert cases[0][1] == "E5 · c1 · similarity 0.91 · cardiomegaly\nCardiomegaly."
    shown = gr.Gallery(value=cases).value  # what the page receives: a file and its caption
    assert len(shown) == 1 and shown[0]["caption"].startswith("E5 · c1")


def test_renderers():
    trace = render.trace_markdown([
        {"turn": 1, "step": "ingest", "images": ["img-1"]},
        {"turn": 1, "round": 1, "step": "think", "calls": ["describe_image"], "elapsed_s": 1.5,
         "routed": {"describe_image": 0.61}, "route_error": "router down"},
        {"turn": 1, "round": 1, "step": "act", "tool": "describe_image",
         "args": {"image_id": "img-1"}, "status": "error", "evidence_id": "E1", "elapsed_s": 0.25,
         "summary": "bad id"},
        {"turn": 1, "round": 2, "step": "think", "calls": ["final_answer"], "elapsed_s": 0.5,
         "error": "final_answer: confidence must be a number"},
        {"turn": 1, "round": 2, "step": "rethink", "decision": "think", "supported": 0,
         "problems": ["claim 'x' cites no evidence"], "contradictions": []},
        {"turn": 1, "round": 2, "step": "think", "calls": [], "elapsed_s": 0.0,
         "stopped": "E1 (case_answer) declined this question"},
        {"turn": 1, "round": 3, "step": "answer", "confidence": 0.2, "raw_confidence": 0.35,
         "calibration": "isotonic", "abstained": True, "budget_exhausted": False,
         "samples": ["a", "b"], "agreement": 1 / 3},
        {"turn": 1, "step": "a kind this app does not know"},
    ])
    assert "describe_image" in trace and "cites no evidence" in trace and "(abstained)" in trace
    assert "(offered describe_image 0.61)" in trace and "2 sampled answers, 33% agree" in trace
    assert '❌ **act** `describe_image` `{"image_id": "img-1"}` → error (E1, 0.25 s): bad id' in trace
    assert "📥 **ingest** img-1" in trace and "⚠ router down" in trace
    assert "⚠ final_answer: confidence must be a number" in trace
    assert "confidence 0.20 (isotonic-calibrated from 0.35) (abstained)" in trace
    assert "⏹ **stop**: E1 (case_answer) declined this question" in trace
    assert len(trace.splitlines()) == 9  # the unknown kind is left out
    assert render.trace_markdown([]) == render.NO_STEPS
    ans = Answer(text="t", findings=[Claim(statement="s", evidence_ids=["E2"])], confidence=0.3,
                 abstained=True, contradictions=["E1 vs E2"])
    md = render.answer_markdown({"answer": ans})
    assert "ABSTAINED" in md and "30%" in md and "⚠ E1 vs E2" in md
    sure = Answer(text="t", findings=[], confidence=0.9, abstained=False)
    assert "**Confidence 90% (high)**" in render.answer_markdown({"answer": sure})
    assert render.answer_markdown({}) == ""
    assert render.chat_history([HumanMessage(content="q"), ai(call("x")), ai(content="a")]) == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
