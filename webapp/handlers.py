"""Event handlers: what runs when the user asks, uploads, speaks or (re)loads the page.

Each ``make_*`` returns the function Gradio calls, bound to the app's ``Runner`` or context,
so the tests call them exactly as Gradio does. A handler never raises for the user's input
(a bad file, bad audio, a failing backend): it shows one line and the app carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from langchain_core.runnables import RunnableConfig

from agent import AgentContext
from agent.trace import TraceStep
from tools.errors import IngestError
from tools.evidence import Evidence
from webapp.render import (
    NO_STEPS,
    answer_markdown,
    chat_history,
    overlay_value,
    similar_cases,
    trace_markdown,
)
from webapp.sessions import THREAD_ID, Runner, new_thread, thread_is_usable
from webapp.uploads import ingest_uploads, upload_status

__all__ = [
    "RESPOND_OUTPUTS",
    "make_respond",
    "make_restore",
    "make_start_over",
    "make_transcribe",
    "make_upload",
]

# Outputs of ``respond``, in order.
RESPOND_OUTPUTS = ("chat", "trace", "overlay", "answer", "question", "pending", "gallery")


def make_respond(runner: Runner) -> Callable[..., Iterator[tuple[Any, ...]]]:
    """The chat handler: streams the graph's steps into the chat, trace, overlay and answer.

    Yields tuples in ``RESPOND_OUTPUTS`` order. ``pending`` holds the ids of uploaded images
    (or paths, loaded by the graph's ingest step, whose errors are shown like an upload's).
    """

    def respond(
        question: str,
        pending: list[str] | None,
        history: list[dict[str, str]] | None,
        thread: str,
        llm: str | None = None,
        tool_names: list[str] | None = None,
        rounds: float | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        history = list(history or [])
        pending = list(pending or [])
        skip = gr.skip()
        if not (question or "").strip():
            gr.Warning("Type or speak a question first.")
            yield history, skip, skip, skip, skip, pending, skip
            return
        if not THREAD_ID.match(thread or ""):
            raise gr.Error("This session has no valid conversation thread; reload the page.")
        history.append({"role": "user", "content": question})
        run_ctx = runner.run_context(llm, int(rounds) if rounds else None)
        config: RunnableConfig = {
            "configurable": {"thread_id": thread},
            "recursion_limit": run_ctx.recursion_limit,
        }
        graph = runner.graph(tool_names)
        inputs = {"messages": [("user", question)], "images": pending}
        trace: list[TraceStep] = []
        try:
            for trace_md, overlay in _stream_steps(runner, graph, inputs, config, run_ctx, trace):
                yield history, trace_md, overlay, skip, skip, [], skip
        except IngestError as exc:
            history.append({"role": "assistant", "content": f"Could not read the upload: {exc}"})
            yield history, trace_markdown(trace), skip, skip, question, [], skip
            return
        except gr.Error:
            raise
        except Exception as exc:  # a broken backend must not take the app down with it
            history.append({"role": "assistant",
                            "content": f"The agent failed ({type(exc).__name__}: {exc})."})
            yield history, trace_markdown(trace), skip, skip, question, pending, skip
            return
        yield _finished(runner, graph.get_state(config).values, history, trace, question)

    return respond


def _finished(
    runner: Runner, state: dict[str, Any], history: list[dict[str, str]],
    trace: list[TraceStep], question: str,
) -> tuple[Any, ...]:
    """The last update of a run: the answer, the whole overlay and the similar cases."""
    skip = gr.skip()
    ans = state.get("answer")
    if ans is None:  # the stream ended without an answer (it should not): say so
        history.append({"role": "assistant", "content": "The agent stopped without an answer."})
        return history, trace_markdown(trace), skip, skip, question, [], skip
    history.append({"role": "assistant", "content": ans.text})
    all_ids = [x.id for x in state.get("image_refs") or []]
    all_ev = state.get("evidence") or []
    cases = similar_cases(runner.ctx, all_ev)
    return (history, trace_markdown(trace), overlay_value(runner.ctx, all_ev, all_ids) or skip,
            answer_markdown(state), "", [], gr.Gallery(value=cases, visible=bool(cases)))


def _stream_steps(
    runner: Runner, graph: Any, inputs: dict[str, Any], config: RunnableConfig,
    run_ctx: AgentContext, trace: list[TraceStep],
) -> Iterator[tuple[str, Any]]:
    """(trace markdown, overlay update) after every step; ``trace`` collects the steps.

    The overlay is redrawn when a step brings evidence (or the first image arrives), and
    earlier turns' images and evidence stay drawable while this turn streams.
    """
    thread = config["configurable"]["thread_id"]
    before = runner.state(thread)
    image_ids: list[str] = [x.id for x in before.get("image_refs") or []]
    evidence: list[Evidence] = list(before.get("evidence") or [])
    shown = False
    for update in graph.stream(inputs, config, context=run_ctx, stream_mode="updates"):
        drew = False
        for node_update in update.values():
            if not isinstance(node_update, dict):
                continue
            trace.extend(node_update.get("trace") or [])
            image_ids += [x.id for x in node_update.get("image_refs") or []]
            if node_update.get("evidence"):
                evidence += node_update["evidence"]
                drew = True
        overlay = overlay_value(runner.ctx, evidence, image_ids) if drew or not shown else None
        shown = shown or overlay is not None
        yield trace_markdown(trace), overlay if overlay is not None else gr.skip()


def make_upload(
    ctx: AgentContext,
    max_bytes: int,
    upload_root: str | Path | None = None,
    delete_after_s: float = 0.0,
) -> Callable[..., tuple[Any, str, dict[str, Any], list[str], Any]]:
    """The upload handler: store + de-identify, show headers, list errors; never raises.

    Returns (cleared file box, status markdown, headers, pending ids, gallery previews); the
    pending ids (a volume's planes after it) are what the next question sends to the graph.
    """

    def on_upload(
        files: list[str] | None, pending: list[str] | None
    ) -> tuple[Any, str, dict[str, Any], list[str], Any]:
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files or []]
        res = ingest_uploads(ctx, paths, max_bytes, upload_root, delete_after_s)
        for e in res.errors:
            gr.Warning(f"Could not use {e}")
        queue = list(dict.fromkeys([*(pending or []), *res.image_ids]))
        return None, upload_status(res), res.headers, queue, list(res.previews)

    return on_upload


def make_transcribe(recognizer_factory: Callable[[], Any]) -> Callable[..., tuple[str, str]]:
    """The microphone handler: the transcript goes into the question box for review.

    Returns (question box text, speech status line); bad or silent audio keeps what was typed.
    """

    def transcribe(audio: str | None, current: str) -> tuple[str, str]:
        if not audio:
            return current, ""
        from webapp.speech import AudioError, SpeechUnavailableError

        try:
            t = recognizer_factory().transcribe(audio)
        except (AudioError, SpeechUnavailableError) as exc:
            gr.Warning(f"Speech: {exc}")
            return current, f"❌ Speech: {exc}"
        if not t.text:
            gr.Warning("Speech: nothing was recognised; please try again.")
            return current, "❌ Speech: nothing was recognised"
        return t.text, (f"🎤 transcribed {t.audio_s:.1f} s of audio in {t.elapsed_s:.1f} s "
                        f"({t.model}); review it, then Ask")

    return transcribe


def make_restore(runner: Runner) -> Callable[..., tuple[Any, ...]]:
    """On page load: continue the browser's remembered thread if it is this user's.

    Otherwise the session keeps the thread it was created with (so a question sent before
    the page finished loading stays in the conversation shown), or gets a new one when that
    thread is not this user's. Returns (thread, remembered thread, chat, trace, overlay,
    answer).
    """

    def restore(
        remembered: str | None, current: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        user = getattr(request, "username", None) if request is not None else None
        if not thread_is_usable(remembered, user):
            remembered = current if thread_is_usable(current, user) else new_thread(user)
        assert remembered is not None
        state = runner.state(remembered)
        if not state:
            return remembered, remembered, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        trace = [s for s in state.get("trace") or [] if s.get("turn") == state.get("turn")]
        ov = overlay_value(runner.ctx, state.get("evidence") or [],
                           [x.id for x in state.get("image_refs") or []])
        return (remembered, remembered, chat_history(state.get("messages") or []),
                trace_markdown(trace), ov, answer_markdown(state))

    return restore


def make_start_over() -> Callable[..., tuple[Any, ...]]:
    """"New conversation": a fresh thread (remembered too) and every panel cleared.

    Returns (thread, remembered thread, chat, trace, overlay, answer, pending, previews).
    """

    def start_over(request: gr.Request) -> tuple[Any, ...]:
        t = new_thread(getattr(request, "username", None))
        return t, t, [], NO_STEPS, None, "", [], None

    return start_over
