"""medloop's Gradio app: chat about medical images, see the evidence and the tool trace.

Research software, not a medical device. The app renders what the agent graph streams; it owns
no reasoning of its own:

* uploads (DICOM, PNG, JPEG, NIfTI; several at once) are loaded the way the agent loads them,
  keeping only de-identified metadata (shown as the "de-identified header"); the raw upload is
  deleted from Gradio's upload folder shortly after it has been read;
* the graph's ``updates`` stream drives the tool trace (think / act / rethink, each tool's
  inputs, time and result) and the evidence overlay, step by step;
* a spoken question is transcribed offline (``agent.speech``) into the question box for review,
  or sent directly when the user asks for that;
* every browser session has its own conversation thread, checkpointed in SQLite; its random
  id (the only key to it) is remembered in the browser's local storage (``gr.BrowserState``,
  keyed by a secret kept under ``MEDLOOP_HOME`` so it survives a restart), so a page reload or
  an app restart shows the conversation again; nothing is shared between sessions, and only
  the id is stored in the browser. With ``--auth`` a thread also belongs to its user name.

Secure defaults: 127.0.0.1, no share link, an upload size limit, no file served but Gradio's
own uploads and renderings (no ``allowed_paths``), the LLM backends a browser may choose limited
to those the operator listed at launch (a browser cannot point the server at a URL).

Run: ``python app.py [--port 7860] [--llm embedded] [--auth user:password]`` or ``medloop app``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from agent import AgentContext, build_graph
from agent.checkpoint import make_checkpointer
from tools.errors import IngestError, MedloopError
from tools.evidence import Evidence
from tools.overlay import PALETTE, draw_evidence

DISCLAIMER = (
    "**medloop is research software, not a medical device.** Its answers are not a "
    "diagnosis; a qualified clinician must review every finding."
)
DEFAULT_MAX_UPLOAD_MB = 100
OVERLAY_PX = 1024  # longest side of the overlay sent to the browser
RAW_UPLOAD_TTL_S = 120.0  # seconds a raw (identifiable) upload stays on disk after it was read
_THREAD = re.compile(r"^(?:[A-Za-z0-9_.@-]{1,64}~)?[0-9a-f]{32}$")
_GIVEN_MODEL = "(the model this app was started with)"


# =============================================================================================
# Rendering: pure functions of the graph's state and events (tested without a browser)
# =============================================================================================


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _focus_image(evidence: Sequence[Evidence], image_ids: Sequence[str]) -> str | None:
    """The image the latest successful evidence is about, else the first image."""
    for ev in reversed(evidence):
        if ev.status == "ok" and ev.image_id in image_ids:
            return ev.image_id
    return image_ids[0] if image_ids else None


def evidence_overlay(
    ctx: AgentContext, evidence: Sequence[Evidence], image_ids: Sequence[str]
) -> tuple[np.ndarray, list[tuple[Any, str]]] | None:
    """The focused image with its evidence, as ``gr.AnnotatedImage`` wants it.

    Measurement lines and their labels are drawn into the picture by ``tools.overlay`` (the same
    function its tests check); masks and boxes (XYXY pixels) become the annotated image's
    labelled layers, so each can be highlighted from the legend. Labels read
    ``"E3 segment_lungs: left lung"``.
    """
    image_id = _focus_image(evidence, image_ids)
    if image_id is None:
        return None
    img = ctx.store.get(image_id)
    h, w = img.display.shape[:2]
    mine = [e for e in evidence if e.status == "ok" and e.image_id in (None, image_id)]
    lines_only = [e.model_copy(update={"mask_keys": [], "boxes": []}) for e in mine]
    base = draw_evidence(img.display, lines_only, ctx.store, image_id)
    notes: list[tuple[Any, str]] = []
    for ev in mine:
        for i, key in enumerate(ev.mask_keys):
            try:
                mask = ctx.store.get_array(key)
            except MedloopError:
                continue
            if mask.shape != (h, w):  # another image's mask: never stretched onto this one
                continue
            label = ev.boxes[i].label if i < len(ev.boxes) and ev.boxes[i].label else ""
            notes.append((mask.astype(bool) * 0.45, f"{ev.id} {ev.tool} {label}".strip()))
        for box in ev.boxes:
            x0, y0, x1, y1 = (round(v) for v in box.xyxy)
            x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
            x1, y1 = max(x0 + 1, min(x1, w)), max(y0 + 1, min(y1, h))
            notes.append((_outline(h, w, (x0, y0, x1, y1)), f"{ev.id} {box.label}".strip()))
    return base, notes


def _outline(h: int, w: int, xyxy: tuple[int, int, int, int]) -> np.ndarray:
    """A box as an outline-only layer (Gradio's own boxes fill at 50 % and hide the anatomy)."""
    x0, y0, x1, y1 = xyxy
    t = max(2, round(max(h, w) / 300))
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0 : x0 + t] = m[y0:y1, max(x1 - t, x0) : x1] = 1.0
    m[y0 : y0 + t, x0:x1] = m[max(y1 - t, y0) : y1, x0:x1] = 1.0
    return m


def overlay_colours(notes: list[tuple[Any, str]]) -> dict[str, str]:
    """The palette of ``tools.overlay``, one colour per annotation label."""
    return {label: _hex(PALETTE[i % len(PALETTE)]) for i, (_, label) in enumerate(notes)}


def similar_cases(ctx: AgentContext, evidence: Sequence[Evidence]) -> list[tuple[Any, str]]:
    """Retrieved cases as (thumbnail, caption) pairs for ``gr.Gallery``.

    Read from any ok evidence whose ``data["cases"]`` lists dicts with a ``thumbnail_key`` (an
    array in the store), a ``case_id``, a ``score``, ``labels`` and a ``report`` (the shape
    ``retrievers.similar`` writes); a case without a
    thumbnail is skipped in the gallery (its report still reaches the answer via the summary).
    """
    out: list[tuple[Any, str]] = []
    for ev in evidence:
        if ev.status != "ok":
            continue
        for case in ev.data.get("cases") or []:
            if not isinstance(case, dict):
                continue
            key = case.get("thumbnail_key") or case.get("thumbnail")
            if not isinstance(key, str):
                continue
            try:
                thumb = ctx.store.get_array(key)
            except MedloopError:
                continue
            score = case.get("score")
            head = f"{ev.id} · {case.get('case_id', '?')}"
            if isinstance(score, int | float):
                head += f" · similarity {score:.2f}"
            labels = case.get("labels")
            if isinstance(labels, list) and labels:
                head += f" · {', '.join(str(x) for x in labels)}"
            report = str(case.get("report") or case.get("impression") or "")[:400]
            out.append((np.asarray(thumb, np.uint8), f"{head}\n{report}".strip()))
    return out


def _args(args: Any) -> str:
    try:
        return json.dumps(args, default=str)[:300]
    except (TypeError, ValueError):
        return str(args)[:300]


def trace_markdown(trace: list[dict[str, Any]]) -> str:
    """The think / act / rethink steps as a readable list, with inputs, time and result."""
    lines = []
    for t in trace:
        step = t.get("step")
        if step == "think":
            calls = ", ".join(t.get("calls") or []) or "reply"
            routed = t.get("routed") or {}
            offered = (f" (offered {', '.join(f'{k} {v:.2f}' for k, v in routed.items())})"
                       if routed else "")
            lines.append(
                f"- 🧠 **think** (round {t.get('round')}): {calls}{offered} — "
                f"{t.get('elapsed_s', 0):.2f} s"
            )
            if t.get("route_error"):
                lines.append(f"  - ⚠ {t['route_error']}")
        elif step == "act":
            mark = "✅" if t.get("status") == "ok" else "❌"
            lines.append(
                f"- {mark} **act** `{t.get('tool')}` `{_args(t.get('args'))}` → "
                f"{t.get('status')} ({t.get('evidence_id')}, {t.get('elapsed_s', 0):.2f} s): "
                f"{t.get('summary')}"
            )
        elif step == "rethink":
            probs = "; ".join(t.get("problems") or []) or "all claims supported"
            lines.append(f"- 🔁 **rethink** → {t.get('decision')}: {probs}")
        elif step == "answer":
            agree = t.get("agreement")
            lines.append(
                f"- 🏁 **answer** confidence {t.get('confidence', 0):.2f}"
                + (" (abstained)" if t.get("abstained") else "")
                + (f"; {len(t.get('samples') or [])} sampled answers, {agree:.0%} agree"
                   if agree is not None else "")
            )
        elif step == "ingest":
            lines.append(f"- 📥 **ingest** {', '.join(t.get('images') or []) or 'no new images'}")
    return "\n".join(lines) or "_no steps yet_"


def answer_markdown(state: dict[str, Any]) -> str:
    """The answer's confidence in plain words, "abstained" made obvious, and cited findings."""
    ans = state.get("answer")
    if ans is None:
        return ""
    if ans.abstained:
        head = (
            "### ⚠ ABSTAINED — refer to a radiologist\n"
            f"The agent is not confident enough to answer (confidence {ans.confidence:.0%}).\n\n"
        )
    else:
        level = "high" if ans.confidence >= 0.75 else "moderate" if ans.confidence >= 0.5 else "low"
        head = ""
        head += f"**Confidence {ans.confidence:.0%} ({level})** — the agent's estimate that "
        head += "this answer is right.\n\n"
    lines = [head.rstrip()]
    if getattr(ans, "budget_exhausted", False):
        lines.append("_The step budget ran out: this answer uses what was found so far._")
    lines += [f"- {c.statement} _[{', '.join(c.evidence_ids)}]_" for c in ans.findings]
    lines += [f"- ⚠ {c}" for c in ans.contradictions]
    return "\n".join(lines)


def chat_history(messages: Sequence[Any]) -> list[dict[str, str]]:
    """The user's questions and the final answers of a thread, for the chat box."""
    out: list[dict[str, str]] = []
    for m in messages:
        if isinstance(m, HumanMessage):
            out.append({"role": "user", "content": str(m.content)})
        elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
            out.append({"role": "assistant", "content": str(m.content)})
    return out


# =============================================================================================
# Uploads
# =============================================================================================


@dataclass
class UploadResult:
    """What arrived: the stored image ids, their de-identified headers, one error per bad file."""

    image_ids: list[str] = field(default_factory=list)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    previews: list[tuple[np.ndarray, str]] = field(default_factory=list)


def ingest_uploads(
    ctx: AgentContext,
    paths: Sequence[str],
    max_bytes: int,
    upload_root: str | Path | None = None,
    delete_after_s: float = 0.0,
) -> UploadResult:
    """Load and de-identify each upload into the store; never raises for a bad file.

    A file outside ``upload_root`` (when given) is refused: the app reads only what the
    browser uploaded, never a path a client names. Raw uploads inside ``upload_root`` are
    deleted ``delete_after_s`` seconds after they were read, so identifiers in them do not
    linger on disk. Not at once in the app: Gradio stores identical uploads at one path, and
    a second session uploading the same file at the same moment must still find it.
    """
    from tools.ingest.loader import load_image

    res = UploadResult()
    root = Path(upload_root).resolve() if upload_root is not None else None
    for raw in paths:
        p = Path(raw)
        name = p.name
        try:
            if root is not None and not p.resolve().is_relative_to(root):
                raise IngestError(f"{name}: not an uploaded file")
            if p.is_file() and p.stat().st_size > max_bytes:
                raise IngestError(
                    f"{name}: {p.stat().st_size / 1e6:.1f} MB is over the "
                    f"{max_bytes / 1e6:.0f} MB upload limit"
                )
            img = load_image(p)
            ref = ctx.store.put(img)
        except IngestError as exc:
            res.errors.append(str(exc))
            continue
        except Exception as exc:  # the app must survive any file; the user gets one line
            res.errors.append(f"{name}: could not be read ({type(exc).__name__})")
            continue
        finally:
            if root is not None and p.is_file() and p.resolve().is_relative_to(root):
                forget_upload(p, delete_after_s)
        res.image_ids.append(ref.id)
        res.headers[ref.id] = {
            "summary": ref.summary,
            "source_format": img.source_format,
            "shape": list(img.pixels.shape),
            "spacing_mm": list(img.spacing_mm) if img.spacing_mm else None,
            "spacing_source": img.spacing_source,
            "metadata": img.meta,
            "notes": img.notes,
        }
        res.previews.append((img.display, ref.id))
    return res


def forget_upload(path: Path, delay_s: float) -> None:
    """Delete a raw upload now, or after ``delay_s`` unless it was uploaded again meanwhile."""
    if delay_s <= 0:
        path.unlink(missing_ok=True)
        return
    seen = path.stat().st_mtime

    def later() -> None:
        try:
            if path.stat().st_mtime == seen:  # a newer identical upload resets the clock
                path.unlink()
        except FileNotFoundError:
            pass

    timer = threading.Timer(delay_s, later)
    timer.daemon = True
    timer.start()


def upload_status(res: UploadResult) -> str:
    """One line per stored image and per refused file."""
    lines = [f"✅ `{i}` {res.headers[i]['summary']} — de-identified" for i in res.image_ids]
    lines += [f"❌ **Could not use** {e}" for e in res.errors]
    return "\n".join(lines)


# =============================================================================================
# Sessions and settings
# =============================================================================================


def new_thread(username: str | None = None) -> str:
    """A fresh, unguessable thread id; prefixed by the user name when the app has auth."""
    tid = uuid.uuid4().hex
    return f"{re.sub(r'[^A-Za-z0-9_.@-]', '_', username)[:64]}~{tid}" if username else tid


def thread_is_usable(thread: Any, username: str | None) -> bool:
    """A well-formed thread id that belongs to this user (or to nobody, without auth)."""
    if not isinstance(thread, str) or not _THREAD.match(thread):
        return False
    owner = thread.split("~", 1)[0] if "~" in thread else None
    if username is None:
        return owner is None
    return owner == re.sub(r"[^A-Za-z0-9_.@-]", "_", username)[:64]


def app_secret(home: Path) -> str:
    """The key that encrypts the thread id in browsers' local storage, kept across restarts."""
    path = home / "app_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


class Runner:
    """The graphs of one app: one per tool selection, all sharing one checkpointer and store."""

    def __init__(self, ctx: AgentContext, llm_choices: Sequence[str] = ()) -> None:
        self.ctx = ctx
        if ctx.tools is not None:
            self.tools = list(ctx.tools)
        else:
            from agent.planner.toolset import default_tools

            self.tools = default_tools(ctx.store, ctx.device)
        self.saver = make_checkpointer(ctx.checkpoint, ctx.home_dir)
        given = ctx.llm if isinstance(ctx.llm, str) else _GIVEN_MODEL
        self.llm_choices = list(dict.fromkeys([given, *llm_choices]))
        self._graphs: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    @property
    def tool_names(self) -> list[str]:
        """Every tool the operator's tool set offers."""
        return [t.name for t in self.tools]

    def graph(self, tool_names: Sequence[str] | None = None) -> Any:
        """The compiled graph offering ``tool_names`` (all tools when None)."""
        names = tuple(self.tool_names if tool_names is None else
                      [n for n in self.tool_names if n in set(tool_names)])
        with self._lock:
            if names not in self._graphs:
                chosen = [t for t in self.tools if t.name in names]
                sub = dataclasses.replace(self.ctx, tools=chosen)
                sub._store = self.ctx.store
                self._graphs[names] = build_graph(sub, checkpointer=self.saver)
            return self._graphs[names]

    def run_context(self, llm: str | None, rounds: int | None) -> AgentContext:
        """The settings of one run: the operator's, with the browser's backend and budget."""
        run = dataclasses.replace(self.ctx)
        run._store = self.ctx.store
        if llm and llm != _GIVEN_MODEL:
            if llm not in self.llm_choices:
                raise gr.Error(f"LLM backend {llm!r} is not offered by this app")
            run.llm = llm
        if rounds:
            run.max_rounds = max(1, min(int(rounds), 20))
        return run

    def state(self, thread: str) -> dict[str, Any]:
        """The checkpointed state of a thread ({} when it has none)."""
        snap = self.graph().get_state({"configurable": {"thread_id": thread}})
        return dict(snap.values or {})


# =============================================================================================
# Handlers
# =============================================================================================

# Outputs of ``respond``, in order.
RESPOND_OUTPUTS = ("chat", "trace", "overlay", "answer", "question", "pending", "gallery")


def make_respond(runner: Runner) -> Callable[..., Any]:
    """The chat handler: streams the graph's steps into the chat, trace, overlay and answer.

    Yields tuples in ``RESPOND_OUTPUTS`` order. ``pending`` holds the ids of uploaded images
    (or paths, loaded by the graph's ingest step, whose errors are shown like an upload's).
    """
    r = runner

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
        if not _THREAD.match(thread or ""):
            raise gr.Error("This session has no valid conversation thread; reload the page.")
        history.append({"role": "user", "content": question})
        run_ctx = r.run_context(llm, int(rounds) if rounds else None)
        config: RunnableConfig = {
            "configurable": {"thread_id": thread},
            "recursion_limit": run_ctx.recursion_limit,
        }
        graph = r.graph(tool_names)
        inputs = {"messages": [("user", question)], "images": pending}
        trace: list[dict[str, Any]] = []
        try:
            for trace_md, overlay in _stream_steps(r, graph, inputs, config, run_ctx, trace):
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
        state = graph.get_state(config).values
        ans = state.get("answer")
        if ans is None:  # the stream ended without an answer (it should not): say so
            history.append({"role": "assistant", "content": "The agent stopped without an answer."})
            yield history, trace_markdown(trace), skip, skip, question, [], skip
            return
        history.append({"role": "assistant", "content": ans.text})
        all_ids = [x.id for x in state.get("image_refs") or []]
        all_ev = state.get("evidence") or []
        cases = similar_cases(r.ctx, all_ev)
        yield (history, trace_markdown(trace), _overlay_value(r.ctx, all_ev, all_ids) or skip,
               answer_markdown(state), "", [], gr.Gallery(value=cases, visible=bool(cases)))

    return respond


def _stream_steps(
    r: Runner, graph: Any, inputs: dict[str, Any], config: RunnableConfig,
    run_ctx: AgentContext, trace: list[dict[str, Any]],
) -> Iterator[tuple[str, Any]]:
    """(trace markdown, overlay update) after every step; ``trace`` collects the steps.

    The overlay is redrawn when a step brings evidence (or the first image arrives), and
    earlier turns' images and evidence stay drawable while this turn streams.
    """
    thread = config["configurable"]["thread_id"]
    before = r.state(thread)
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
        overlay = _overlay_value(r.ctx, evidence, image_ids) if drew or not shown else None
        shown = shown or overlay is not None
        yield trace_markdown(trace), overlay if overlay is not None else gr.skip()


def _overlay_value(
    ctx: AgentContext, evidence: Sequence[Evidence], image_ids: Sequence[str]
) -> Any:
    ov = evidence_overlay(ctx, evidence, image_ids)
    if ov is None:
        return None
    base, notes = shrink(*ov)
    return gr.AnnotatedImage(value=(base, notes), color_map=overlay_colours(notes))


def shrink(
    base: np.ndarray, notes: list[tuple[Any, str]], longest: int = OVERLAY_PX
) -> tuple[np.ndarray, list[tuple[Any, str]]]:
    """Scale an overlay so its longest side is at most ``longest`` pixels, for the browser.

    A 2000-pixel radiograph and its layers would be re-encoded on every streamed step; the
    labels and lines are already drawn, so a smaller copy loses nothing the user reads.
    """
    from PIL import Image

    h, w = base.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1:
        return base, notes
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BILINEAR))
    layers = [
        (np.asarray(Image.fromarray(np.asarray(m, np.float32)).resize(size, Image.Resampling.BOX)),
         label)
        for m, label in notes
    ]
    return small, layers


def make_upload(
    ctx: AgentContext,
    max_bytes: int,
    upload_root: str | Path | None = None,
    delete_after_s: float = 0.0,
) -> Callable[..., Any]:
    """The upload handler: store + de-identify, show headers, list errors; never raises."""

    def on_upload(
        files: list[str] | None, pending: list[str] | None
    ) -> tuple[Any, str, dict[str, Any], list[str], Any]:
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files or []]
        res = ingest_uploads(ctx, paths, max_bytes, upload_root, delete_after_s)
        for e in res.errors:
            gr.Warning(f"Could not use {e}")
        queue = list(dict.fromkeys([*(pending or []), *res.image_ids]))
        previews = [(d, i) for d, i in res.previews]
        return None, upload_status(res), res.headers, queue, previews

    return on_upload


def make_transcribe(recognizer_factory: Callable[[], Any]) -> Callable[..., Any]:
    """The microphone handler: the transcript goes into the question box for review."""

    def transcribe(audio: str | None, current: str) -> tuple[str, str]:
        if not audio:
            return current, ""
        from agent.speech import AudioError, SpeechUnavailableError

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


def make_restore(runner: Runner) -> Callable[..., Any]:
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
        turn = state.get("turn")
        trace = [s for s in state.get("trace") or [] if s.get("turn") == turn]
        ov = _overlay_value(runner.ctx, state.get("evidence") or [],
                            [x.id for x in state.get("image_refs") or []])
        return (remembered, remembered, chat_history(state.get("messages") or []),
                trace_markdown(trace), ov, answer_markdown(state))

    return restore


# =============================================================================================
# The app
# =============================================================================================


def make_app(
    ctx: AgentContext,
    *,
    llm_choices: Sequence[str] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    recognizer_factory: Callable[[], Any] | None = None,
) -> gr.Blocks:
    """Build the Blocks app around the agent graph for ``ctx``.

    ``llm_choices`` are extra backend specs a browser may switch to (the operator's list);
    ``recognizer_factory`` returns the speech recogniser (default: the packaged Whisper).
    """
    runner = Runner(ctx, llm_choices)
    respond = make_respond(runner)
    max_bytes = int(max_upload_mb * 1e6)
    on_upload = make_upload(ctx, max_bytes, gr.utils.get_upload_folder(), RAW_UPLOAD_TTL_S)
    if recognizer_factory is None:
        from agent.speech import get_recognizer

        def recognizer_factory() -> Any:
            return get_recognizer(home=ctx.home_dir)

    transcribe = make_transcribe(recognizer_factory)
    secret = app_secret(ctx.home_dir)

    with gr.Blocks(title="medloop") as demo:
        gr.Markdown(f"# medloop\n{DISCLAIMER}", elem_id="disclaimer")
        thread = gr.State(new_thread)  # fresh per session; the page load may restore one
        remembered = gr.BrowserState("", storage_key="medloop-thread", secret=secret)
        pending = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=420, elem_id="chat")
                files = gr.File(
                    label="Images (DICOM, PNG, JPEG, NIfTI) — de-identified on arrival",
                    file_count="multiple", type="filepath", elem_id="upload",
                )
                status = gr.Markdown(elem_id="upload-status")
                question = gr.Textbox(label="Question", placeholder="Is the heart enlarged?",
                                      elem_id="question")
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    new = gr.Button("New conversation", elem_id="new-conversation")
                with gr.Accordion("Speak the question (transcribed offline)", open=False):
                    audio = gr.Audio(sources=["microphone", "upload"], type="filepath",
                                     label="Microphone", elem_id="mic")
                    direct = gr.Checkbox(label="Send directly after transcription", value=False)
                    heard = gr.Markdown(elem_id="speech-status")
                with gr.Accordion("Settings", open=False):
                    llm = gr.Dropdown(runner.llm_choices, value=runner.llm_choices[0],
                                      label="LLM backend (as configured by the operator)")
                    tool_set = gr.CheckboxGroup(runner.tool_names, value=runner.tool_names,
                                                label="Tools the agent may use")
                    budget = gr.Slider(1, 10, value=ctx.max_rounds, step=1,
                                       label="Budget: planner rounds per question")
            with gr.Column(scale=2):
                answer = gr.Markdown(elem_id="answer")
                overlay = gr.AnnotatedImage(label="Evidence on the image", elem_id="overlay")
                cases = gr.Gallery(label="Similar cases", visible=False, elem_id="cases")
                with gr.Accordion("Tool trace (think → act → rethink)", open=True):
                    trace = gr.Markdown("_no steps yet_", elem_id="trace")
                with gr.Accordion("Uploaded images and their de-identified header", open=True):
                    previews = gr.Gallery(label="Images waiting for the next question",
                                          columns=4, height=160)
                    header = gr.JSON(label="De-identified header", elem_id="header")
        gr.Markdown(DISCLAIMER)

        outputs = [chat, trace, overlay, answer, question, pending, cases]
        ask_inputs = [question, pending, chat, thread, llm, tool_set, budget]
        # Uploads have their own queue, so a file is read at once even while questions run.
        files.upload(on_upload, [files, pending], [files, status, header, pending, previews],
                     api_name="upload", concurrency_id="upload", concurrency_limit=4)
        ask.click(respond, ask_inputs, outputs, api_name="ask", concurrency_id="agent")
        question.submit(respond, ask_inputs, outputs, api_visibility="private",
                        concurrency_id="agent")

        def send_if_direct(send: bool, *args: Any) -> Iterator[tuple[Any, ...]]:
            if send and (args[0] or "").strip():
                yield from respond(*args)

        for ev in (audio.stop_recording, audio.upload):
            ev(transcribe, [audio, question], [question, heard], api_visibility="private",
               concurrency_id="speech", concurrency_limit=1).then(
                send_if_direct, [direct, *ask_inputs], outputs, concurrency_id="agent"
            )

        def start_over(request: gr.Request) -> tuple[Any, ...]:
            t = new_thread(getattr(request, "username", None))
            return t, t, [], "_no steps yet_", None, "", [], None
        new.click(start_over, None,
                  [thread, remembered, chat, trace, overlay, answer, pending, previews],
                  api_visibility="private")
        demo.load(make_restore(runner), [remembered, thread],
                  [thread, remembered, chat, trace, overlay, answer], api_visibility="private")
    return demo


def _auth(spec: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` pairs, comma-separated (``--auth`` or ``MEDLOOP_AUTH``)."""
    if not spec:
        return None
    pairs = [tuple(p.split(":", 1)) for p in spec.split(",") if ":" in p]
    if not pairs:
        raise SystemExit("--auth expects user:password[,user2:password2]")
    return [(u, p) for u, p in pairs]


def main(argv: list[str] | None = None) -> None:
    """Start the app on 127.0.0.1 (no share link)."""
    p = argparse.ArgumentParser(description="medloop web app (research software)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--llm", default=os.environ.get("MEDLOOP_LLM", "embedded"))
    p.add_argument("--llm-choice", action="append", default=[],
                   help="another backend spec browsers may switch to (repeatable)")
    p.add_argument("--auth", default=os.environ.get("MEDLOOP_AUTH"),
                   help="user:password[,user2:password2]; also MEDLOOP_AUTH")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    p.add_argument("--max-rounds", type=int, default=5)
    args = p.parse_args(argv)
    demo = make_app(AgentContext(llm=args.llm, max_rounds=args.max_rounds),
                    llm_choices=args.llm_choice, max_upload_mb=args.max_upload_mb)
    launch(demo, args.host, args.port, _auth(args.auth), args.max_upload_mb)


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: list[tuple[str, str]] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
) -> Any:
    """Launch with medloop's secure defaults; ``block=False`` returns at once (tests, benches)."""
    # Four questions run at once (the CPU is the limit); at most 64 wait, later ones are told
    # the queue is full rather than piling up without bound.
    return demo.queue(default_concurrency_limit=4, max_size=64).launch(
        server_name=host, server_port=port, share=False, auth=auth,
        max_file_size=f"{max_upload_mb:g}mb", show_error=False, prevent_thread_lock=not block,
        quiet=not block, ssr_mode=False, mcp_server=False,
        # Gradio's run history would keep every question and answer in the browser's storage.
        run_history=False,
    )


if __name__ == "__main__":
    main()
