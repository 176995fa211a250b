"""The app in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The app runs in this process on 127.0.0.1 and a free port, with the scripted planner and the
real basic tools, so what the page shows comes from the real graph. ``make test`` installs
Chromium with apt when it is missing; Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pw = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MEDLOOP_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs it with apt)"),
]
TIMEOUT_MS = 60_000


# Without an image the scripted planner proposes the same claimless answer again: rethink stops
# at the repeat, and the agent abstains saying the evidence does not support an answer.
NO_ANSWER = "The evidence does not support an answer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, port: int):
    """The app on 127.0.0.1:``port`` with the scripted planner, real basic tools and SQLite."""
    import app
    from agent import AgentContext
    from tests.webapp.helpers import planner
    from tools.store import ImageStore
    from tools.vision.basic import basic_tools
    from webapp.speech import SpeechRecognizer

    store = ImageStore(home / "store")
    ctx = AgentContext(llm=planner(), tools=basic_tools(store), home=home, checkpoint="sqlite")
    ctx._store = store
    rec = SpeechRecognizer("tiny.en", home=home)  # the smaller packaged model: no joining
    demo = app.make_app(ctx, max_upload_mb=10, recognizer_factory=lambda: rec)
    app.launch(demo, port=port, max_upload_mb=10, block=False)
    return demo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    demo = _start(tmp_path_factory.mktemp("browser-home"), port)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server"])
        yield b
        b.close()


def _open(browser, url):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#disclaimer").wait_for()
    return context, page


def _ask(page, question):
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()


def _chat(page) -> str:
    return page.locator("#chat").inner_text()


def test_upload_ask_see_answer_overlay_trace_and_sessions_stay_apart(server, browser, tmp_path):
    from pydicom.data import get_testdata_file

    chest = get_testdata_file("RG1_UNCI.dcm")
    ctx_a, a = _open(browser, server)
    assert "not a medical device" in a.locator("#disclaimer").inner_text()
    a.locator("#upload input[type=file]").set_input_files(chest)
    status = a.locator("#upload-status")
    pw.expect(status).to_contain_text("de-identified", timeout=TIMEOUT_MS)
    assert "RG1_UNCI" not in status.inner_text()  # the id is shown, never the file name
    _ask(a, "How large is the bright region?")
    pw.expect(a.locator("#chat")).to_contain_text("A bright square, 32 px wide.",
                                                  timeout=TIMEOUT_MS)
    trace = a.locator("#trace")
    pw.expect(trace).to_contain_text("region_stats")
    assert "measure_distance" in trace.inner_text() and "rethink" in trace.inner_text()
    assert a.locator("#overlay img").count() >= 2  # the radiograph and its annotation layers
    pw.expect(a.locator("#overlay")).to_contain_text("E1 region")
    pw.expect(a.locator("#answer")).to_contain_text("Confidence")

    # A second browser (its own storage) sees none of it, and its question stays its own.
    ctx_b, b = _open(browser, server)
    b.wait_for_timeout(500)  # let the page's load event restore (or create) its thread
    assert "bright region" not in _chat(b)
    _ask(b, "Is anything else there?")
    pw.expect(b.locator("#chat")).to_contain_text(NO_ANSWER, timeout=TIMEOUT_MS)
    assert "bright region" not in _chat(b)
    assert "anything else" not in _chat(a)

    # A reload brings the conversation back from the checkpoint (the thread is remembered).
    a.reload()
    pw.expect(a.locator("#chat")).to_contain_text("How large is the bright region?",
                                                  timeout=TIMEOUT_MS)
    assert "anything else" not in _chat(a)
    ctx_a.close()
    ctx_b.close()


def test_bad_uploads_show_errors_and_the_app_keeps_working(server, browser, tmp_path):
    ctx, page = _open(browser, server)
    note = tmp_path / "notes.txt"
    note.write_text("this is not an image")
    page.locator("#upload input[type=file]").set_input_files(str(note))
    pw.expect(page.locator("#upload-status")).to_contain_text("Could not use notes.txt")

    big = tmp_path / "huge.dcm"
    with open(big, "wb") as f:
        f.truncate(11 * 1024 * 1024)  # over the 10 MB limit this app was started with
    page.locator("#upload input[type=file]").set_input_files(str(big))
    pw.expect(page.get_by_text("exceed the maximum allowed size", exact=False).first).to_be_visible()

    png = Path(tmp_path / "ok.png")
    from tests.webapp.helpers import png as make_png

    make_png(png)
    page.locator("#upload input[type=file]").set_input_files(str(png))
    pw.expect(page.locator("#upload-status")).to_contain_text("de-identified")
    _ask(page, "Still working?")
    pw.expect(page.locator("#chat")).to_contain_text("A bright square, 32 px wide.",
                                                     timeout=TIMEOUT_MS)
    ctx.close()


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                    reason="espeak-ng and sox make the spoken question")
def test_a_spoken_question_is_transcribed_and_sent(server, browser, tmp_path):
    from tests.webapp.test_speech import speak

    wav = speak("Is the heart enlarged on this chest X-ray?", tmp_path / "q.wav")
    ctx, page = _open(browser, server)
    page.get_by_text("Speak the question").click()
    page.get_by_label("Send directly after transcription").check()
    page.locator("#mic").get_by_label("Upload file").click()  # the microphone's file source
    page.locator("#mic input[type=file]").set_input_files(wav)
    pw.expect(page.locator("#speech-status")).to_contain_text("transcribed", timeout=TIMEOUT_MS)
    pw.expect(page.locator("#chat")).to_contain_text("heart", timeout=TIMEOUT_MS)
    pw.expect(page.locator("#chat")).to_contain_text(NO_ANSWER, timeout=TIMEOUT_MS)
    assert "chest" in _chat(page).lower()
    ctx.close()


def test_no_file_outside_the_upload_cache_is_served(server, tmp_path):
    import urllib.error
    import urllib.request

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 patient name")
    for path in (f"gradio_api/file={secret}", "gradio_api/file=/etc/passwd",
                 "gradio_api/file=../../../../etc/passwd", f"file={secret}"):
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
            with opener.open(server + path, timeout=10) as r:
                body = r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 404), path
            continue
        assert "root:x" not in body, path


def test_the_conversation_survives_an_app_restart(browser, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"  # the same origin after the restart: same local storage
    demo = _start(tmp_path, port)
    ctx, page = _open(browser, url)
    try:
        _ask(page, "Will you remember this question?")
        pw.expect(page.locator("#chat")).to_contain_text(NO_ANSWER, timeout=TIMEOUT_MS)
        stored = page.evaluate("JSON.stringify(localStorage)")
        assert "medloop-thread" in stored and "remember" not in stored  # an id, not the chat
    finally:
        demo.close()
    demo = _start(tmp_path, port)  # a new app object on the same home: secret and checkpoints
    try:
        page.reload()
        pw.expect(page.locator("#chat")).to_contain_text("Will you remember this question?",
                                                         timeout=TIMEOUT_MS)
        pw.expect(page.locator("#trace")).to_contain_text("answer")
    finally:
        ctx.close()
        demo.close()
