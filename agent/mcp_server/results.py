"""What a medloop MCP tool returns: text for the model, structured content, overlay PNGs.

A tool's ``Evidence`` becomes (1) one text block, its summary, which is what an MCP host's model
reads; (2) structured content ``{"evidence": {...}, "image": {...}}``, the evidence and the
image's de-identified description as JSON, for programs; (3) the evidence drawn on the image
(``tools.overlay.draw_evidence``: masks, boxes, measurement lines), as a PNG image block, when
there is something to draw. ``ask`` returns the answer the same way, with one overlay per
image its evidence marks.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from mcp import types

from tools.evidence import Evidence
from tools.image import ImageRef
from tools.overlay import draw_evidence
from tools.store import ImageStore

__all__ = ["DISCLAIMER", "answer_result", "error_result", "evidence_result", "overlay_png"]

DISCLAIMER = "medloop is research software, not a medical device; do not use it for diagnosis."


def error_result(message: str) -> types.CallToolResult:
    """A tool error the host's model can read and act on (MCP ``isError``)."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                isError=True)


def _drawable(ev: Evidence) -> bool:
    return ev.status == "ok" and bool(
        ev.boxes or ev.mask_keys or any(m.line for m in ev.measurements))


def overlay_png(store: ImageStore, image_id: str, evidence: Sequence[Evidence]) -> bytes | None:
    """``evidence`` drawn on ``image_id``'s display as PNG bytes; None when nothing to draw."""
    from PIL import Image

    items = [e for e in evidence if _drawable(e) and e.image_id in (None, image_id)]
    if not items or image_id not in store:
        return None
    try:
        drawn = draw_evidence(store.get(image_id).display, items, store, image_id)
    except ValueError:  # a display that is not one 2D picture (a volume): nothing to draw on
        return None
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    return buf.getvalue()


def _png_block(png: bytes) -> types.ImageContent:
    return types.ImageContent(type="image", data=base64.b64encode(png).decode("ascii"),
                              mimeType="image/png")


def evidence_result(ev: Evidence, store: ImageStore,
                    ref: ImageRef | None) -> types.CallToolResult:
    """One tool call's result: its summary, the evidence as JSON and its overlay."""
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=ev.summary)]
    if ev.new_image_ids:
        content[0] = types.TextContent(type="text", text=(
            f"{ev.summary}\nNew image(s) stored: {', '.join(ev.new_image_ids)} "
            "(pass {\"id\": ...} as the image of another call)."))
    structured: dict[str, Any] = {"evidence": ev.model_dump(mode="json")}
    if ref is not None:
        structured["image"] = ref.model_dump(mode="json")
        png = overlay_png(store, ref.id, [ev])
        if png is not None:
            content.append(_png_block(png))
    return types.CallToolResult(content=content, structuredContent=structured,
                                isError=ev.status != "ok")


def answer_result(state: dict[str, Any], thread: str, store: ImageStore) -> types.CallToolResult:
    """The agent's answer: readable text, the answer and its evidence as JSON, overlays."""
    answer = state["answer"]
    evidence: list[Evidence] = list(state.get("evidence") or [])
    refs: list[ImageRef] = list(state.get("image_refs") or [])
    lines = [answer.text, "", f"confidence {answer.confidence:.2f}"
             + (" (abstained: refer to a radiologist)" if answer.abstained else "")]
    lines += [f"- {c.statement} [{', '.join(c.evidence_ids)}]" for c in answer.findings]
    lines += [f"  {e.for_prompt()}" for e in evidence]
    lines += [f"! {c}" for c in answer.contradictions]
    lines.append(f"thread {thread} · {DISCLAIMER}")
    content: list[types.ContentBlock] = [types.TextContent(type="text", text="\n".join(lines))]
    for ref in refs:
        png = overlay_png(store, ref.id, evidence)
        if png is not None:
            content.append(_png_block(png))
    structured = {
        "answer": answer.text,
        "confidence": round(float(answer.confidence), 4),
        "abstained": answer.abstained,
        "findings": [c.model_dump(mode="json") for c in answer.findings],
        "contradictions": list(answer.contradictions),
        "budget_exhausted": answer.budget_exhausted,
        "evidence": [e.model_dump(mode="json") for e in evidence],
        "images": [r.model_dump(mode="json") for r in refs],
        "thread": thread,
        "disclaimer": DISCLAIMER,
    }
    return types.CallToolResult(content=content, structuredContent=structured, isError=False)
