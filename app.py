"""medloop's Gradio app: chat about medical images, see the evidence and the tool trace.

Research software, not a medical device. The app renders what the agent graph streams; it owns
no reasoning of its own. Every browser session gets its own conversation thread; the server
listens on 127.0.0.1 with no share link unless told otherwise.

Run: ``python app.py [--port 7860] [--llm embedded]`` or ``medloop app``.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
from langchain_core.runnables import RunnableConfig

from agent import AgentContext, build_graph
from tools.errors import IngestError
from tools.evidence import Evidence

DISCLAIMER = (
    "**medloop is research software, not a medical device.** Its answers are not a "
    "diagnosis; a qualified clinician must review every finding."
)


def evidence_overlay(
    ctx: AgentContext, evidence: list[Evidence], image_ids: list[str]
) -> tuple[np.ndarray, list[tuple[Any, str]]] | None:
    """The first image with every box and mask its evidence carries, for ``gr.AnnotatedImage``."""
    if not image_ids:
        return None
    image_id = image_ids[0]
    img = ctx.store.get(image_id)
    base = img.display if img.display.ndim == 3 else np.stack([img.display] * 3, axis=-1)
    notes: list[tuple[Any, str]] = []
    for ev in evidence:
        if ev.status != "ok" or ev.image_id not in (None, image_id):
            continue
        for box in ev.boxes:
            x0, y0, x1, y1 = (round(v) for v in box.xyxy)
            notes.append(((x0, y0, x1, y1), f"{ev.id} {box.label}".strip()))
        for key in ev.mask_keys:
            notes.append((ctx.store.get_array(key).astype(float), ev.id))
    return base, notes


def trace_markdown(trace: list[dict[str, Any]]) -> str:
    """The think / act / rethink steps as a readable list."""
    lines = []
    for t in trace:
        step = t.get("step")
        if step == "think":
            calls = ", ".join(t.get("calls") or []) or "reply"
            lines.append(
                f"- **think** (round {t.get('round')}): {calls} — {t.get('elapsed_s', 0):.2f} s"
            )
        elif step == "act":
            lines.append(
                f"- **act** `{t.get('tool')}` {t.get('args')} → {t.get('status')} "
                f"({t.get('evidence_id')}, {t.get('elapsed_s', 0):.2f} s): {t.get('summary')}"
            )
        elif step == "rethink":
            probs = "; ".join(t.get("problems") or []) or "all claims supported"
            lines.append(f"- **rethink** → {t.get('decision')}: {probs}")
        elif step == "answer":
            lines.append(
                f"- **answer** confidence {t.get('confidence', 0):.2f}"
                + (" (abstained)" if t.get("abstained") else "")
            )
        elif step == "ingest":
            lines.append(f"- **ingest** {', '.join(t.get('images') or []) or 'no new images'}")
    return "\n".join(lines) or "_no steps yet_"


def answer_markdown(state: dict[str, Any]) -> str:
    """The answer, its confidence and its cited findings."""
    ans = state.get("answer")
    if ans is None:
        return ""
    head = "### Abstained — refer to a radiologist\n" if ans.abstained else ""
    lines = [head + f"**Confidence {ans.confidence:.0%}**"]
    lines += [f"- {c.statement} _[{', '.join(c.evidence_ids)}]_" for c in ans.findings]
    lines += [f"- ⚠ {c}" for c in ans.contradictions]
    return "\n".join(lines)


def make_respond(graph: Any, ctx: AgentContext) -> Any:
    """The chat handler: streams the graph's steps into the chat, trace, overlay and answer."""

    def respond(
        question: str, files: list[str] | None, history: list[dict[str, str]], thread: str
    ) -> Iterator[tuple[Any, ...]]:
        history = list(history or [])
        if not question.strip():
            gr.Warning("Type a question first.")
            yield history, gr.skip(), gr.skip(), gr.skip(), ""
            return
        history.append({"role": "user", "content": question})
        config: RunnableConfig = {"configurable": {"thread_id": thread}}
        trace: list[dict[str, Any]] = []
        inputs = {"messages": [("user", question)], "images": list(files or [])}
        try:
            for update in graph.stream(inputs, config, stream_mode="updates"):
                for node_update in update.values():
                    if isinstance(node_update, dict):
                        trace.extend(node_update.get("trace") or [])
                yield history, trace_markdown(trace), gr.skip(), gr.skip(), ""
        except IngestError as exc:
            history.append({"role": "assistant", "content": f"Could not read the upload: {exc}"})
            yield history, trace_markdown(trace), gr.skip(), gr.skip(), question
            return
        state = graph.get_state(config).values
        ans = state["answer"]
        history.append({"role": "assistant", "content": ans.text})
        overlay = evidence_overlay(
            ctx, state.get("evidence") or [], [r.id for r in state.get("image_refs") or []]
        )
        yield history, trace_markdown(trace), overlay, answer_markdown(state), ""

    return respond


def make_app(ctx: AgentContext) -> gr.Blocks:
    """Build the Blocks app around one compiled graph."""
    graph = build_graph(ctx)
    respond = make_respond(graph, ctx)

    with gr.Blocks(title="medloop") as demo:
        gr.Markdown(f"# medloop\n{DISCLAIMER}")
        thread = gr.State(lambda: uuid.uuid4().hex)  # one conversation per browser session
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=420)
                files = gr.File(
                    label="Images (DICOM, PNG, JPEG)", file_count="multiple", type="filepath"
                )
                question = gr.Textbox(label="Question", placeholder="Is the heart enlarged?")
                ask = gr.Button("Ask", variant="primary")
            with gr.Column(scale=2):
                overlay = gr.AnnotatedImage(label="Evidence on the image")
                answer = gr.Markdown()
                trace = gr.Markdown(label="Tool trace")
        outputs = [chat, trace, overlay, answer, question]
        ask.click(respond, [question, files, chat, thread], outputs)
        question.submit(respond, [question, files, chat, thread], outputs)
    return demo


def main(argv: list[str] | None = None) -> None:
    """Start the app on 127.0.0.1 (no share link)."""
    p = argparse.ArgumentParser(description="medloop web app")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--llm", default=os.environ.get("MEDLOOP_LLM", "embedded"))
    args = p.parse_args(argv)
    demo = make_app(AgentContext(llm=args.llm))
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=False, max_file_size="200mb"
    )


if __name__ == "__main__":
    main()
