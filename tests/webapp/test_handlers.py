"""webapp.handlers, driven by the scripted model and called as Gradio calls them (no browser).

The browser itself is exercised in ``test_browser.py``; here failures point at the logic rather
than at the page.
"""

from __future__ import annotations

import re

import gradio as gr
import pytest

from tests.fakes import ScriptedChatModel, ai, call, final
from tests.webapp.helpers import png, runner
from tests.webapp.test_uploads import _nifti
from webapp import handlers
from webapp.sessions import GIVEN_MODEL, new_thread


def test_upload_then_ask_streams_trace_overlay_and_answer(tmp_path, store):
    r = runner(tmp_path, store)
    up = handlers.make_upload(r.ctx, max_bytes=10_000_000)
    _, status, headers, pending, previews = up([str(png(tmp_path / "sq.png"))], [])
    assert len(pending) == 1 and pending[0] in status and "de-identified" in status
    assert headers[pending[0]]["source_format"] == "png" and previews[0][0].shape == (64, 64)

    respond = handlers.make_respond(r)
    updates = list(respond("How big is it?", pending, [], new_thread()))
    assert len(updates) >= 4  # streamed step by step, not only at the end
    first_trace = updates[0][1]
    assert "**ingest**" in first_trace and "answer" not in first_trace
    # the evidence is drawn as it arrives: the act step's update already carries the overlay
    act_update = next(u for u in updates if "**act**" in u[1])
    assert isinstance(act_update[2], gr.AnnotatedImage)
    assert [a["label"] for a in act_update[2].value["annotations"]] == ["E1 region"]
    history, trace, overlay, answer, box, pending_after, _ = updates[-1]
    assert history[-1] == {"role": "assistant", "content": "A bright square, 32 px wide."}
    assert '`region_stats` `{"image_id"' in trace and "[16, 16, 48, 48]" in trace  # inputs
    assert re.search(r"→ ok \(E1, \d+\.\d\d s\)", trace)  # status, evidence id and time
    assert "**rethink** → answer" in trace
    assert "Confidence" in answer and "_[E1, E2]_" in answer and box == "" and pending_after == []


def test_an_uploaded_volume_reaches_the_planner_with_its_planes(tmp_path, store):
    model = ScriptedChatModel.of([final("A volume.", [], 0.1)] * 6)
    r = runner(tmp_path, store, model)
    _, _, _, pending, _ = handlers.make_upload(r.ctx, 10**8)([str(_nifti(tmp_path / "v.nii"))], [])
    assert len(pending) == 4  # the volume, then its axial, coronal and sagittal planes
    history, trace, *_ = list(handlers.make_respond(r)("What is this?", pending, [],
                                                       new_thread()))[-1]
    assert f"**ingest** {', '.join(pending)}" in trace
    prompt = "\n".join(str(m.content) for m in model.seen[0])
    for plane_id, plane in zip(pending[1:], ("axial", "coronal", "sagittal"), strict=True):
        assert plane_id in prompt and f"{plane} plane" in prompt


def test_bad_path_in_the_question_turn_keeps_the_question(tmp_path, store):
    bad = tmp_path / "report.txt"
    bad.write_text("not an image")
    model = ScriptedChatModel.of([])
    history, _, _, _, box, _, _ = list(
        handlers.make_respond(runner(tmp_path, store, model))("what is this?", [str(bad)], [],
                                                               new_thread()))[-1]
    assert history[-1]["content"].startswith("Could not read the upload:")
    assert "report.txt" in history[-1]["content"] and box == "what is this?"
    assert model.seen == []  # the planner never ran on a broken upload


def test_a_failing_backend_is_reported_not_fatal(tmp_path, store):
    def boom(messages):
        raise RuntimeError("server down")

    r = runner(tmp_path, store, ScriptedChatModel.of([boom]))
    history, _, _, _, box, _, _ = list(handlers.make_respond(r)("hi", [], [], new_thread()))[-1]
    assert history[-1]["content"] == "The agent failed (RuntimeError: server down)."
    assert box == "hi"


def test_an_empty_question_asks_for_one_and_runs_nothing(tmp_path, store):
    model = ScriptedChatModel.of([])
    updates = list(handlers.make_respond(runner(tmp_path, store, model))("  ", ["img-x"], [],
                                                                          new_thread()))
    assert len(updates) == 1 and updates[0][5] == ["img-x"] and model.seen == []


def test_settings_pick_backend_tools_and_budget(tmp_path, store):
    pending: list[str] = []
    model = ScriptedChatModel.forever(lambda: ai(call("describe_image", image_id=pending[0])))
    r = runner(tmp_path, store, model)
    up = handlers.make_upload(r.ctx, max_bytes=10_000_000)
    pending += up([str(png(tmp_path / "sq.png"))], [])[3]
    respond = handlers.make_respond(r)
    history, trace, *_ = list(respond("q", pending, [], new_thread(), GIVEN_MODEL,
                                      ["describe_image"], 2))[-1]
    assert trace.count("**think**") == 2  # the budget of 2 rounds was kept
    first, last = ([t.get("name") or t["function"]["name"] for t in o]
                   for o in (model.offered[0], model.offered[-1]))
    assert first == ["describe_image"]  # only the chosen tools
    assert last == ["final_answer"]  # describe_image already answered for the one image
    with pytest.raises(gr.Error, match="not offered"):
        r.run_context("openai:x@http://169.254.169.254/", None)


def test_spoken_question_handler_refuses_bad_audio_without_loading_a_model(tmp_path):
    from webapp.speech import SpeechRecognizer

    rec = SpeechRecognizer(home=tmp_path)
    transcribe = handlers.make_transcribe(lambda: rec)
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    text, status = transcribe(str(bad), "typed so far")
    assert text == "typed so far" and status.startswith("❌ Speech:") and "noise.wav" in status
    assert rec._model is None
    assert transcribe(None, "keep") == ("keep", "")


def test_a_session_without_a_valid_thread_is_refused(tmp_path, store):
    respond = handlers.make_respond(runner(tmp_path, store))
    for bad in ("", "shared", "../x"):
        with pytest.raises(gr.Error, match="no valid conversation thread"):
            list(respond("q", [], [], bad))


def test_start_over_gives_a_fresh_thread_and_clears_the_panels():
    from types import SimpleNamespace

    thread, remembered, chat, trace, overlay, answer, pending, previews = (
        handlers.make_start_over()(SimpleNamespace(username="ann")))
    assert thread == remembered and thread.startswith("ann~")
    assert (chat, overlay, answer, pending, previews) == ([], None, "", [], None)
    assert trace == "_no steps yet_"
