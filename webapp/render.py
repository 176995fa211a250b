"""Rendering: pure functions of the graph's state and trace, tested without a browser.

The evidence overlay (masks, boxes, measurement lines on the focused image), the similar-cases
gallery, the think / act / rethink trace, the answer with its confidence, and the chat history
of a checkpointed thread. Everything here reads the state the graph wrote; nothing decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr
import numpy as np
from langchain_core.messages import AIMessage, HumanMessage

from agent import AgentContext
from agent.trace import ActStep, AnswerStep, IngestStep, RethinkStep, ThinkStep, TraceStep
from tools.errors import MedloopError
from tools.evidence import Evidence
from tools.overlay import PALETTE, draw_evidence

__all__ = [
    "NO_STEPS",
    "OVERLAY_PX",
    "answer_markdown",
    "chat_history",
    "evidence_overlay",
    "overlay_colours",
    "overlay_value",
    "shrink",
    "similar_cases",
    "trace_markdown",
]

OVERLAY_PX = 1024  # longest side, in pixels, of the overlay sent to the browser
NO_STEPS = "_no steps yet_"


# -- the evidence overlay -------------------------------------------------------------------


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
        notes += _mask_layers(ctx, ev, (h, w))
        notes += [(_outline(h, w, _clip(box.xyxy, h, w)), f"{ev.id} {box.label}".strip())
                  for box in ev.boxes]
    return base, notes


def _mask_layers(ctx: AgentContext, ev: Evidence, shape: tuple[int, int]) -> list[tuple[Any, str]]:
    """One 45 %-opaque layer per stored mask of ``ev`` that matches the image's (H, W)."""
    layers: list[tuple[Any, str]] = []
    for i, key in enumerate(ev.mask_keys):
        try:
            mask = ctx.store.get_array(key)
        except MedloopError:
            continue
        if mask.shape != shape:  # another image's mask: never stretched onto this one
            continue
        label = ev.boxes[i].label if i < len(ev.boxes) and ev.boxes[i].label else ""
        layers.append((mask.astype(bool) * 0.45, f"{ev.id} {ev.tool} {label}".strip()))
    return layers


def _clip(xyxy: tuple[float, float, float, float], h: int, w: int) -> tuple[int, int, int, int]:
    """A box (XYXY pixels) rounded and kept inside an (H, W) image, at least 1 pixel wide."""
    x0, y0, x1, y1 = (round(v) for v in xyxy)
    x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
    return x0, y0, max(x0 + 1, min(x1, w)), max(y0 + 1, min(y1, h))


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


def overlay_value(
    ctx: AgentContext, evidence: Sequence[Evidence], image_ids: Sequence[str]
) -> gr.AnnotatedImage | None:
    """The overlay as the page's ``gr.AnnotatedImage`` update (None: no image to draw on)."""
    ov = evidence_overlay(ctx, evidence, image_ids)
    if ov is None:
        return None
    base, notes = shrink(*ov)
    return gr.AnnotatedImage(value=(base, notes), color_map=overlay_colours(notes))


# -- retrieved cases ------------------------------------------------------------------------


def similar_cases(ctx: AgentContext, evidence: Sequence[Evidence]) -> list[tuple[Any, str]]:
    """Retrieved cases as (thumbnail, caption) pairs for ``gr.Gallery``.

    Read from any ok evidence whose ``data["cases"]`` lists dicts with a ``thumbnail_key`` (an
    array in the store), a ``case_id``, a ``score``, ``labels`` and a ``report`` (the shape
    ``retrievers.similar`` writes); a case without a thumbnail is skipped in the gallery (its
    report still reaches the answer via the summary).
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
            out.append((np.asarray(thumb, np.uint8), _case_caption(ev.id, case)))
    return out


def _case_caption(evidence_id: str, case: Mapping[str, Any]) -> str:
    """``"E5 · c1 · similarity 0.91 · cardiomegaly"`` and the report's first 400 characters."""
    score = case.get("score")
    head = f"{evidence_id} · {case.get('case_id', '?')}"
    if isinstance(score, int | float):
        head += f" · similarity {score:.2f}"
    labels = case.get("labels")
    if isinstance(labels, list) and labels:
        head += f" · {', '.join(str(x) for x in labels)}"
    report = str(case.get("report") or case.get("impression") or "")[:400]
    return f"{head}\n{report}".strip()


# -- the trace ------------------------------------------------------------------------------


def _args(args: Any) -> str:
    """Tool arguments as compact JSON (at most 300 characters), for one trace line."""
    try:
        return json.dumps(args, default=str)[:300]
    except (TypeError, ValueError):
        return str(args)[:300]


def _ingest_line(t: IngestStep) -> list[str]:
    return [f"- 📥 **ingest** {', '.join(t['images']) or 'no new images'}"]


def _think_line(t: ThinkStep) -> list[str]:
    if t.get("consulted"):
        return [f"- 🩺 **consult** {', '.join(t['calls'])}: asked first, no planner call"]
    if t.get("stopped"):
        return [f"- ⏹ **stop**: {t['stopped']}"]
    calls = ", ".join(t["calls"]) or "reply"
    routed = t.get("routed") or {}
    offered = (f" (offered {', '.join(f'{k} {v:.2f}' for k, v in routed.items())})"
               if routed else "")
    lines = [f"- 🧠 **think** (round {t['round']}): {calls}{offered} — {t['elapsed_s']:.2f} s"]
    # why every tool was offered, or the malformed call the planner was told about
    lines += [f"  - ⚠ {note}" for note in (t.get("route_error"), t.get("error")) if note]
    return lines


def _act_line(t: ActStep) -> list[str]:
    mark = "✅" if t["status"] == "ok" else "❌"
    return [f"- {mark} **act** `{t['tool']}` `{_args(t['args'])}` → {t['status']} "
            f"({t['evidence_id']}, {t['elapsed_s']:.2f} s): {t['summary']}"]


def _rethink_line(t: RethinkStep) -> list[str]:
    probs = "; ".join(t["problems"]) or "all claims supported"
    return [f"- 🔁 **rethink** → {t['decision']}: {probs}"]


def _answer_line(t: AnswerStep) -> list[str]:
    calibrated = (f" ({t['calibration']}-calibrated from {t['raw_confidence']:.2f})"
                  if t.get("calibration") else "")
    agree = t.get("agreement")
    sampled = (f"; {len(t.get('samples') or [])} sampled answers, {agree:.0%} agree"
               if agree is not None else "")
    abstained = " (abstained)" if t["abstained"] else ""
    return [f"- 🏁 **answer** confidence {t['confidence']:.2f}{calibrated}{abstained}{sampled}"]


def _step_lines(t: TraceStep) -> list[str]:
    """The markdown lines of one trace record, by its ``step`` kind (unknown kinds: none)."""
    if t["step"] == "ingest":
        return _ingest_line(t)
    if t["step"] == "think":
        return _think_line(t)
    if t["step"] == "act":
        return _act_line(t)
    if t["step"] == "rethink":
        return _rethink_line(t)
    if t["step"] == "answer":
        return _answer_line(t)
    return []


def trace_markdown(trace: Sequence[TraceStep]) -> str:
    """The think / act / rethink steps as a readable list, with inputs, time and result.

    Reads the typed records of ``agent.trace`` (one per step, as the nodes write them).
    """
    return "\n".join(line for t in trace for line in _step_lines(t)) or NO_STEPS


# -- the answer and the conversation --------------------------------------------------------


def answer_markdown(state: Mapping[str, Any]) -> str:
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
        head = (f"**Confidence {ans.confidence:.0%} ({level})** — the agent's estimate that "
                "this answer is right.\n\n")
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
