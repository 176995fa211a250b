"""The app's handlers and renderers, driven by the scripted model (no browser).

The browser itself is exercised in ``test_browser.py``; here every handler is called as
Gradio calls it, so failures point at the logic rather than at the page.
"""

from __future__ import annotations

import itertools
import json
import re
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

import app
from agent import AgentContext
from agent.answer import Answer, Claim
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.vision.basic import basic_tools
from tools.evidence import Box, Evidence, Measurement
from tools.ingest.loader import load_image

NO_USER = SimpleNamespace(username=None)


def _png(path, value=200):
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 16:48] = value
    Image.fromarray(arr).save(path)
    return path


def _planner():
    """Measures a region and a distance on the image it is shown, then answers citing both."""

    def step(messages):
        system = str(messages[0].content)
        image_id = re.search(r"img-[0-9a-f]{12}", system)
        if image_id and "E2 (" not in system:
            return ai(call("region_stats", image_id=image_id[0], box=[16, 16, 48, 48]),
                      call("measure_distance", image_id=image_id[0], points=[16, 32, 48, 32]))
        if image_id:
            return final("A bright square, 32 px wide.", [("square measured", ["E1", "E2"])], 0.8)
        return final("No image was given.", [], 0.2)

    return ScriptedChatModel.of(itertools.repeat(step))


def _runner(tmp_path, store, model=None, checkpoint="memory", **kw):
    ctx = AgentContext(llm=model or _planner(), tools=basic_tools(store), home=tmp_path,
                       checkpoint=checkpoint, **kw)
    ctx._store = store
    return app.Runner(ctx)


def test_upload_then_ask_streams_trace_overlay_and_answer(tmp_path, store):
    runner = _runner(tmp_path, store)
    up = app.make_upload(runner.ctx, max_bytes=10_000_000)
    _, status, headers, pending, previews = up([str(_png(tmp_path / "sq.png"))], [])
    assert len(pending) == 1 and pending[0] in status and "de-identified" in status
    assert headers[pending[0]]["source_format"] == "png" and previews[0][0].shape == (64, 64)

    respond = app.make_respond(runner)
    updates = list(respond("How big is it?", pending, [], app.new_thread()))
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


def test_overlay_draws_masks_boxes_and_lines(tmp_path, store):
    img = load_image(_png(tmp_path / "sq.png"))
    ref = store.put(img)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
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
    base, notes = app.evidence_overlay(ctx, ev, [ref.id])
    assert [label for _, label in notes] == ["E1 segment square", "E1 square"]
    assert notes[0][0][20, 20] > 0 and notes[0][0][2, 2] == 0  # mask layer
    outline = notes[1][0]
    assert outline[16, 30] == 1 and outline[30, 30] == 0  # box drawn as an outline only
    grey = img.display[60, 30]
    assert not (base[60, 30] == grey).all()  # the measurement line is drawn into the picture
    assert set(app.overlay_colours(notes)) == {"E1 segment square", "E1 square"}
    small, layers = app.shrink(np.zeros((2000, 1000, 3), np.uint8), [(np.ones((2000, 1000)), "a")],
                               longest=500)
    assert small.shape == (500, 250, 3) and layers[0][0].shape == (500, 250)


def test_similar_cases_render_as_gallery_with_reports(tmp_path, store):
    thumb = store.put_array(np.full((32, 32), 90, np.uint8))  # grey, as the library stores them
    ev = Evidence(id="E5", tool="similar_cases", summary="3 similar",
                  data={"cases": [{"case_id": "c1", "score": 0.91, "report": "Cardiomegaly.",
                                   "labels": ["cardiomegaly"], "thumbnail_key": thumb},
                                  {"case_id": "c2", "report": "no thumbnail"}]})
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
    cases = app.similar_cases(ctx, [ev])
    assert len(cases) == 1
    assert cases[0][0].shape == (32, 32)
    assert cases[0][1] == "E5 · c1 · similarity 0.91 · cardiomegaly\nCardiomegaly."
    shown = gr.Gallery(value=cases).value  # what the page receives: a file and its caption
    assert len(shown) == 1 and shown[0]["caption"].startswith("E5 · c1")


def test_bad_uploads_each_get_a_message_and_the_app_goes_on(tmp_path, store):
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
    root = tmp_path / "uploads"
    root.mkdir()
    txt = root / "report.txt"
    txt.write_text("not an image")
    big = root / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 3000)
    trunc = root / "cut.dcm"
    trunc.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    good = _png(root / "ok.png")
    outside = _png(tmp_path / "elsewhere.png")
    res = app.ingest_uploads(ctx, [str(txt), str(big), str(trunc), str(good), str(outside)],
                             max_bytes=2000, upload_root=root)
    assert len(res.image_ids) == 1 and len(res.errors) == 4
    msgs = "\n".join(res.errors)
    assert "report.txt" in msgs and "big.png" in msgs and "upload limit" in msgs
    assert "cut.dcm" in msgs and "elsewhere.png: not an uploaded file" in msgs
    assert not any(p.exists() for p in (txt, big, trunc, good))  # raw uploads deleted
    assert outside.exists()  # a file outside the upload folder is never touched
    status = app.upload_status(res)
    assert status.count("❌ **Could not use**") == 4 and status.count("✅") == 1


def test_bad_path_in_the_question_turn_keeps_the_question(tmp_path, store):
    bad = tmp_path / "report.txt"
    bad.write_text("not an image")
    model = ScriptedChatModel.of([])
    runner = _runner(tmp_path, store, model)
    history, _, _, _, box, _, _ = list(
        app.make_respond(runner)("what is this?", [str(bad)], [], app.new_thread()))[-1]
    assert history[-1]["content"].startswith("Could not read the upload:")
    assert "report.txt" in history[-1]["content"] and box == "what is this?"
    assert model.seen == []  # the planner never ran on a broken upload


def test_a_failing_backend_is_reported_not_fatal(tmp_path, store):
    def boom(messages):
        raise RuntimeError("server down")

    runner = _runner(tmp_path, store, ScriptedChatModel.of([boom]))
    history, _, _, _, box, _, _ = list(app.make_respond(runner)("hi", [], [], app.new_thread()))[-1]
    assert history[-1]["content"] == "The agent failed (RuntimeError: server down)."
    assert box == "hi"


def test_sessions_are_isolated_and_survive_a_restart(tmp_path, store):
    model = _planner()
    runner = _runner(tmp_path, store, model, checkpoint="sqlite")
    respond = app.make_respond(runner)
    a, b = app.new_thread(), app.new_thread()
    list(respond("alpha question", [], [], a))
    list(respond("beta question", [], [], b))
    prompt_b = "\n".join(str(m.content) for m in model.seen[-1])
    assert "beta question" in prompt_b and "alpha" not in prompt_b

    restarted = _runner(tmp_path, store, _planner(), checkpoint="sqlite")  # a new app process
    thread, remembered, chat, trace, _, answer = app.make_restore(restarted)(a, b, NO_USER)
    assert thread == remembered == a  # the remembered thread wins over the session's fresh one
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert chat[0]["content"] == "alpha question" and chat[1]["content"]
    assert "**answer**" in trace and "ABSTAINED" in answer  # nothing to look at: it abstained
    current = app.new_thread()
    kept, _, chat, *_ = app.make_restore(restarted)("not-a-thread", current, NO_USER)
    assert kept == current and isinstance(chat, type(gr.skip()))  # the session's own thread
    fresh, *_ = app.make_restore(restarted)(None, None, NO_USER)
    assert fresh not in (a, b, current) and app.thread_is_usable(fresh, None)
    alice = SimpleNamespace(username="alice")
    theirs = app.make_restore(restarted)(a, current, alice)[0]
    assert theirs.startswith("alice~") and app.thread_is_usable(theirs, "alice")


def test_threads_belong_to_their_user_with_auth():
    mine = app.new_thread("alice")
    assert app.thread_is_usable(mine, "alice")
    assert not app.thread_is_usable(mine, "bob")
    assert not app.thread_is_usable(app.new_thread(), "alice")  # an anonymous thread
    assert not app.thread_is_usable(mine, None)
    assert not app.thread_is_usable("../../etc", None)


def test_settings_pick_backend_tools_and_budget(tmp_path, store):
    pending: list[str] = []
    model = ScriptedChatModel.forever(lambda: ai(call("describe_image", image_id=pending[0])))
    runner = _runner(tmp_path, store, model)
    up = app.make_upload(runner.ctx, max_bytes=10_000_000)
    pending += up([str(_png(tmp_path / "sq.png"))], [])[3]
    respond = app.make_respond(runner)
    history, trace, *_ = list(respond("q", pending, [], app.new_thread(), app._GIVEN_MODEL,
                                      ["describe_image"], 2))[-1]
    assert trace.count("**think**") == 2  # the budget of 2 rounds was kept
    offered = [t.get("name") or t["function"]["name"] for t in model.offered[-1]]
    assert offered == ["describe_image", "final_answer"]  # only the chosen tools
    with pytest.raises(gr.Error, match="not offered"):
        runner.run_context("openai:x@http://169.254.169.254/", None)


def test_spoken_question_handler_refuses_bad_audio_without_loading_a_model(tmp_path):
    from agent.speech import SpeechRecognizer

    rec = SpeechRecognizer(home=tmp_path)
    transcribe = app.make_transcribe(lambda: rec)
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    text, status = transcribe(str(bad), "typed so far")
    assert text == "typed so far" and status.startswith("❌ Speech:") and "noise.wav" in status
    assert rec._model is None
    assert transcribe(None, "keep") == ("keep", "")


def test_renderers():
    trace = app.trace_markdown([
        {"step": "think", "round": 1, "calls": ["describe_image"], "elapsed_s": 1.5,
         "routed": {"describe_image": 0.61}},
        {"step": "act", "tool": "describe_image", "args": {"image_id": "img-1"}, "status": "error",
         "evidence_id": "E1", "elapsed_s": 0.25, "summary": "bad id"},
        {"step": "rethink", "decision": "think", "problems": ["claim 'x' cites no evidence"]},
        {"step": "answer", "confidence": 0.2, "abstained": True, "samples": ["a", "b"],
         "agreement": 1 / 3},
    ])
    assert "describe_image" in trace and "cites no evidence" in trace and "(abstained)" in trace
    assert "(offered describe_image 0.61)" in trace and "2 sampled answers, 33% agree" in trace
    assert '❌ **act** `describe_image` `{"image_id": "img-1"}` → error (E1, 0.25 s): bad id' in trace
    ans = Answer(text="t", findings=[Claim(statement="s", evidence_ids=["E2"])], confidence=0.3,
                 abstained=True, contradictions=["E1 vs E2"])
    md = app.answer_markdown({"answer": ans})
    assert "ABSTAINED" in md and "30%" in md and "⚠ E1 vs E2" in md
    sure = Answer(text="t", findings=[], confidence=0.9, abstained=False)
    assert "**Confidence 90% (high)**" in app.answer_markdown({"answer": sure})
    assert app.chat_history([HumanMessage(content="q"), ai(call("x")), ai(content="a")]) == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_app_builds_with_secure_defaults(tmp_path, monkeypatch):
    demo = app.make_app(AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path,
                                     checkpoint="memory"))
    assert demo.title == "medloop"
    texts = [c["props"].get("value") for c in demo.config["components"]]
    assert sum("not a medical device" in str(t) for t in texts) == 2  # top and bottom
    assert (tmp_path / "app_secret").stat().st_mode & 0o077 == 0  # secret readable by owner only

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setattr(app, "make_app", lambda ctx, **kw: demo)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    app.main(["--auth", "ann:pw"])
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999
    assert seen["share"] is False and seen["auth"] == [("ann", "pw")]
    assert seen["max_file_size"] == "100mb" and "allowed_paths" not in seen


def test_embedding_example_runs_and_streams_events(tmp_path, server):
    """examples/embed_graph.py as a user runs it, against a scripted OpenAI-compatible server."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    image_id = load_image(ct).content_id()
    server.reply_calls(("describe_image", {"image_id": image_id}))
    server.reply_calls(("final_answer", {"answer": "A small CT slice.", "confidence": 0.7,
                                         "claims": [{"statement": "CT", "evidence_ids": ["E1"]}]}))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MEDLOOP_HOME": str(tmp_path), "NO_PROXY": "127.0.0.1"}
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "embed_graph.py"), ct, "What is this?",
         "--llm", f"openai:test@{server.url}"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps[:3] == ["ingest", "think", "act"] and "rethink" in steps
    act = next(e for e in events if e.get("step") == "act")
    assert act["tool"] == "describe_image" and act["status"] == "ok"
    assert events[-1]["type"] == "answer" and events[-1]["text"] == "A small CT slice."
    assert events[-1]["evidence"][0]["id"] == "E1"


def test_embedding_example_async_stream(tmp_path, store):
    import asyncio
    import importlib.util
    from pathlib import Path

    from agent import build_graph

    path = Path(__file__).resolve().parents[1] / "examples" / "embed_graph.py"
    spec = importlib.util.spec_from_file_location("embed_graph_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ctx = AgentContext(llm=_planner(), tools=basic_tools(store), home=tmp_path, checkpoint="memory")
    ctx._store = store
    graph = build_graph(ctx)
    png = str(_png(tmp_path / "sq.png"))

    async def collect():
        return [e async for e in example.astream_events(graph, [png], "How big?", "t1")]

    events = asyncio.run(collect())
    assert [e["tool"] for e in events if e.get("step") == "act"] == ["region_stats",
                                                                      "measure_distance"]
    assert events[-1]["text"] == "A bright square, 32 px wide."


def test_langgraph_server_config_validates_with_the_langgraph_cli():
    from pathlib import Path

    from langgraph_cli.config import validate_config_file

    config = validate_config_file(Path(__file__).resolve().parents[1] / "langgraph.json")
    assert config["graphs"] == {"medloop": "./agent/build.py:graph"}
    assert config["dependencies"] == ["."]


def test_a_session_without_a_valid_thread_is_refused(tmp_path, store):
    respond = app.make_respond(_runner(tmp_path, store))
    for bad in ("", "shared", "../x"):
        with pytest.raises(gr.Error, match="no valid conversation thread"):
            list(respond("q", [], [], bad))


def test_raw_uploads_are_deleted_after_a_grace_period_unless_uploaded_again(tmp_path, store):
    import os
    import time

    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
    root = tmp_path / "uploads"
    root.mkdir()
    first, again = _png(root / "a.png"), _png(root / "b.png", value=150)
    res = app.ingest_uploads(ctx, [str(first), str(again)], 10**7, root, delete_after_s=0.3)
    assert len(res.image_ids) == 2 and first.exists()  # a concurrent session can still read it
    os.utime(again, (time.time() + 5, time.time() + 5))  # the same file uploaded once more
    time.sleep(0.8)
    assert not first.exists() and again.exists()


def test_medloop_app_forwards_its_flags(monkeypatch):
    from agent import cli

    seen = []
    monkeypatch.setattr(app, "main", lambda argv: seen.append(argv))
    assert cli.main(["app", "--port", "7001", "--auth", "ann:pw", "--max-upload-mb", "5"]) == 0
    assert seen == [["--port", "7001", "--llm", "embedded", "--auth", "ann:pw",
                     "--max-upload-mb", "5.0"]]


def test_several_formats_at_once_each_with_its_deidentified_header(tmp_path, store):
    import nibabel as nib
    from pydicom.data import get_testdata_file

    vol = np.zeros((24, 20, 6), np.int16)
    vol[8:16, 6:14, 2:4] = 300
    nii = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0])), nii)
    ct = get_testdata_file("CT_small.dcm")
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
    res = app.ingest_uploads(ctx, [str(nii), ct, str(_png(tmp_path / "p.png"))], 10**8)
    assert res.errors == [] and len(res.image_ids) == 3
    formats = sorted(h["source_format"] for h in res.headers.values())
    assert formats == ["dicom", "nifti", "png"]
    dicom = next(h for h in res.headers.values() if h["source_format"] == "dicom")
    assert dicom["metadata"]["modality"] == "CT"
    shown = json.dumps(res.headers)
    for phi in ("CompressedSamples", "1CT1", "20040119", "PatientName"):
        assert phi not in shown  # CT_small's patient name and ids never reach the page
