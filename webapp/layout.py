"""The page: Gradio components and which handler each event runs.

Research software, not a medical device: the disclaimer is shown at the top and the bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gradio as gr

from agent import AgentContext
from webapp.handlers import (
    make_respond,
    make_restore,
    make_start_over,
    make_transcribe,
    make_upload,
)
from webapp.pacs import add_picker, study_picker, wire_picker
from webapp.render import NO_STEPS
from webapp.sessions import Runner, app_secret, new_thread
from webapp.uploads import DEFAULT_MAX_UPLOAD_MB, RAW_UPLOAD_TTL_S

__all__ = ["DISCLAIMER", "make_app"]

DISCLAIMER = (
    "**medloop is research software, not a medical device.** Its answers are not a "
    "diagnosis; a qualified clinician must review every finding."
)


def make_app(
    ctx: AgentContext,
    *,
    llm_choices: Sequence[str] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    recognizer_factory: Callable[[], Any] | None = None,
) -> gr.Blocks:
    """Build the Blocks app around the agent graph for ``ctx``.

    ``llm_choices`` are extra backend specs a browser may switch to (the operator's list);
    ``recognizer_factory`` returns the speech recogniser (default: the packaged Whisper under
    ``ctx.home``, loaded on the first spoken question).
    """
    runner = Runner(ctx, llm_choices)
    if recognizer_factory is None:
        recognizer_factory = _packaged_recognizer(ctx)
    with gr.Blocks(title="medloop") as demo:
        gr.Markdown(f"# medloop\n{DISCLAIMER}", elem_id="disclaimer")
        picker = study_picker(ctx, int(max_upload_mb * 1e6))  # None: no PACS configured
        ui = _components(runner, app_secret(ctx.home_dir), picker is not None)
        gr.Markdown(DISCLAIMER)
        _wire(demo, ui, runner, int(max_upload_mb * 1e6), recognizer_factory)
        if picker is not None:
            wire_picker(ui, picker)
    return demo


def _packaged_recognizer(ctx: AgentContext) -> Callable[[], Any]:
    """The packaged Whisper recogniser for ``ctx``'s home, made on the first spoken question."""

    def factory() -> Any:
        from webapp.speech import get_recognizer

        return get_recognizer(home=ctx.home_dir)

    return factory


def _components(runner: Runner, secret: str, pacs: bool = False) -> dict[str, Any]:
    """Lay out the page; returns its components by name for ``_wire``."""
    ui: dict[str, Any] = {
        "thread": gr.State(new_thread),  # fresh per session; the page load may restore one
        "remembered": gr.BrowserState("", storage_key="medloop-thread", secret=secret),
        "pending": gr.State([]),
    }
    with gr.Row():
        with gr.Column(scale=3):
            ui["chat"] = gr.Chatbot(label="Conversation", height=420, elem_id="chat")
            ui["files"] = gr.File(
                label="Images (DICOM, PNG, JPEG, NIfTI) — de-identified on arrival",
                file_count="multiple", type="filepath", elem_id="upload",
            )
            ui["status"] = gr.Markdown(elem_id="upload-status")
            if pacs:
                add_picker(ui)
            ui["question"] = gr.Textbox(label="Question", placeholder="Is the heart enlarged?",
                                        elem_id="question")
            with gr.Row():
                ui["ask"] = gr.Button("Ask", variant="primary", elem_id="ask")
                ui["new"] = gr.Button("New conversation", elem_id="new-conversation")
            with gr.Accordion("Speak the question (transcribed offline)", open=False):
                ui["audio"] = gr.Audio(sources=["microphone", "upload"], type="filepath",
                                       label="Microphone", elem_id="mic")
                ui["direct"] = gr.Checkbox(label="Send directly after transcription", value=False)
                ui["heard"] = gr.Markdown(elem_id="speech-status")
            with gr.Accordion("Settings", open=False):
                ui["llm"] = gr.Dropdown(runner.llm_choices, value=runner.llm_choices[0],
                                        label="LLM backend (as configured by the operator)")
                ui["tool_set"] = gr.CheckboxGroup(runner.tool_names, value=runner.tool_names,
                                                  label="Tools the agent may use")
                ui["budget"] = gr.Slider(1, 10, value=runner.ctx.max_rounds, step=1,
                                         label="Budget: planner rounds per question")
        with gr.Column(scale=2):
            ui["answer"] = gr.Markdown(elem_id="answer")
            ui["overlay"] = gr.AnnotatedImage(label="Evidence on the image", elem_id="overlay")
            ui["cases"] = gr.Gallery(label="Similar cases", visible=False, elem_id="cases")
            with gr.Accordion("Tool trace (think → act → rethink)", open=True):
                ui["trace"] = gr.Markdown(NO_STEPS, elem_id="trace")
            with gr.Accordion("Uploaded images and their de-identified header", open=True):
                ui["previews"] = gr.Gallery(label="Images waiting for the next question",
                                            columns=4, height=160)
                ui["header"] = gr.JSON(label="De-identified header", elem_id="header")
    return ui


def _wire(
    demo: gr.Blocks, ui: dict[str, Any], runner: Runner, max_bytes: int,
    recognizer_factory: Callable[[], Any],
) -> None:
    """Connect the page's events to the handlers, each on its own concurrency queue."""
    respond = make_respond(runner)
    on_upload = make_upload(runner.ctx, max_bytes, gr.utils.get_upload_folder(), RAW_UPLOAD_TTL_S)
    outputs = [ui[k] for k in ("chat", "trace", "overlay", "answer", "question", "pending",
                               "cases")]
    ask_inputs = [ui[k] for k in ("question", "pending", "chat", "thread", "llm", "tool_set",
                                  "budget")]
    # Uploads have their own queue, so a file is read at once even while questions run.
    ui["files"].upload(on_upload, [ui["files"], ui["pending"]],
                       [ui[k] for k in ("files", "status", "header", "pending", "previews")],
                       api_name="upload", concurrency_id="upload", concurrency_limit=4)
    ui["ask"].click(respond, ask_inputs, outputs, api_name="ask", concurrency_id="agent")
    ui["question"].submit(respond, ask_inputs, outputs, api_visibility="private",
                          concurrency_id="agent")

    def send_if_direct(send: bool, *args: Any) -> Iterator[tuple[Any, ...]]:
        if send and (args[0] or "").strip():
            yield from respond(*args)

    transcribe = make_transcribe(recognizer_factory)
    for event in (ui["audio"].stop_recording, ui["audio"].upload):
        event(transcribe, [ui["audio"], ui["question"]], [ui["question"], ui["heard"]],
              api_visibility="private", concurrency_id="speech", concurrency_limit=1).then(
            send_if_direct, [ui["direct"], *ask_inputs], outputs, concurrency_id="agent"
        )
    ui["new"].click(make_start_over(), None,
                    [ui[k] for k in ("thread", "remembered", "chat", "trace", "overlay", "answer",
                                     "pending", "previews")],
                    api_visibility="private")
    demo.load(make_restore(runner), [ui["remembered"], ui["thread"]],
              [ui[k] for k in ("thread", "remembered", "chat", "trace", "overlay", "answer")],
              api_visibility="private")
