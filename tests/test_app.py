"""The app's handler and renderers, driven by the scripted model (no browser)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from agent import AgentContext, build_graph
from app import answer_markdown, make_app, make_respond, trace_markdown
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.loop_tools import loop_tools
from tools.loader import load_image


def test_respond_streams_trace_then_answer_and_overlay(tmp_path, store):
    png = tmp_path / "square.png"
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 16:48] = 200
    Image.fromarray(arr).save(png)
    image_id = load_image(png).content_id()
    tools, _ = loop_tools(store)
    model = ScriptedChatModel.of([
        ai(call("mean_intensity", image_id=image_id)),
        final("Mean intensity measured.", [("mean measured", ["E1"])], 0.8),
    ])
    ctx = AgentContext(llm=model, tools=tools, home=tmp_path, checkpoint="memory")
    ctx._store = store
    respond = make_respond(build_graph(ctx), ctx)
    updates = list(respond("How bright is it?", [str(png)], [], "session-1"))
    assert len(updates) >= 4  # streamed step by step
    history, trace, overlay, answer, box = updates[-1]
    assert history[-1] == {"role": "assistant", "content": "Mean intensity measured."}
    assert "**act** `mean_intensity`" in trace and "**rethink** → answer" in trace
    assert overlay[0].shape == (64, 64, 3)
    assert "Confidence" in answer and "_[E1]_" in answer and box == ""


def test_bad_upload_shows_a_message_and_keeps_the_question(tmp_path, store):
    bad = tmp_path / "report.txt"
    bad.write_text("not an image")
    model = ScriptedChatModel.of([])
    ctx = AgentContext(llm=model, tools=[], home=tmp_path, checkpoint="memory")
    respond = make_respond(build_graph(ctx), ctx)
    history, _, _, _, box = list(respond("what is this?", [str(bad)], [], "s"))[-1]
    assert history[-1]["content"].startswith("Could not read the upload:")
    assert "report.txt" in history[-1]["content"] and box == "what is this?"
    assert model.seen == []  # the planner never ran on a broken upload


def test_renderers():
    trace = trace_markdown([
        {"step": "think", "round": 1, "calls": ["describe_image"], "elapsed_s": 1.5},
        {"step": "rethink", "decision": "think", "problems": ["claim 'x' cites no evidence"]},
        {"step": "answer", "confidence": 0.2, "abstained": True},
    ])
    assert "describe_image" in trace and "cites no evidence" in trace and "(abstained)" in trace
    from agent.answer import Answer, Claim

    ans = Answer(text="t", findings=[Claim(statement="s", evidence_ids=["E2"])], confidence=0.3,
                 abstained=True, contradictions=["E1 vs E2"])
    md = answer_markdown({"answer": ans})
    assert "Abstained" in md and "30%" in md and "⚠ E1 vs E2" in md


def test_app_builds_and_states_it_is_not_a_medical_device(tmp_path):
    demo = make_app(AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path,
                                 checkpoint="memory"))
    assert demo.title == "medloop"
    assert "not a medical device" in demo.config["components"][0]["props"]["value"]
