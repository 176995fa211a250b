"""Embed medloop's compiled agent graph in another Python app and stream its events.

medloop is research software, not a medical device.

The graph is an ordinary compiled LangGraph graph: build it once with the settings you want,
then call ``stream`` (or ``astream`` in async apps) per question. Each streamed update is one
step of the loop — ``ingest``, ``think``, ``act``, ``rethink``, ``answer`` — carrying small
trace dicts (tool name, arguments, status, seconds, evidence id, one-line result) that you can
forward to your own UI, a websocket or server-sent events. The final state holds a validated
``Answer`` and the numbered ``Evidence`` it cites.

Run it::

    python examples/embed_graph.py chest.dcm "Describe this image"              # embedded LLM
    python examples/embed_graph.py chest.dcm "Describe it" --llm openai:MODEL@http://host/v1

Each line printed is one JSON event, the last one ``{"type": "answer", ...}``.
For the LangGraph server instead of in-process use, ``langgraph dev`` reads ``langgraph.json``
(graph ``medloop`` = ``agent/build.py:graph``) and serves the same graph over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from agent import AgentContext, build_graph


def stream_events(graph: Any, images: list[str], question: str, thread: str) -> Iterator[dict]:
    """Run one question and yield JSON-able events: every step, then the answer.

    ``thread`` names the conversation: ask again with the same id to follow up (the graph's
    checkpointer keeps the history; images sent earlier stay available by id).
    """
    config = {"configurable": {"thread_id": thread}}
    inputs = {"messages": [("user", question)], "images": images}
    for update in graph.stream(inputs, config, stream_mode="updates"):
        for node, change in update.items():
            for step in (change or {}).get("trace") or []:
                yield {"type": "step", "node": node, **step}
    yield _answer_event(graph.get_state(config).values)


async def astream_events(
    graph: Any, images: list[str], question: str, thread: str
) -> AsyncIterator[dict]:
    """The same events from ``graph.astream``, for asyncio apps (FastAPI, aiohttp...)."""
    config = {"configurable": {"thread_id": thread}}
    inputs = {"messages": [("user", question)], "images": images}
    async for update in graph.astream(inputs, config, stream_mode="updates"):
        for node, change in update.items():
            for step in (change or {}).get("trace") or []:
                yield {"type": "step", "node": node, **step}
    yield _answer_event((await graph.aget_state(config)).values)


def _answer_event(state: dict[str, Any]) -> dict[str, Any]:
    answer = state["answer"]
    return {
        "type": "answer",
        "text": answer.text,
        "confidence": answer.confidence,
        "abstained": answer.abstained,
        "findings": [c.model_dump() for c in answer.findings],
        "evidence": [
            {"id": e.id, "tool": e.tool, "status": e.status, "summary": e.summary}
            for e in state.get("evidence") or []
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Stream one question's events to stdout as JSON lines."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", nargs="+", help="image file(s), then the question")
    p.add_argument("--llm", default="embedded", help="embedded | openai:MODEL@URL | hf:ID")
    p.add_argument("--thread", default=None, help="continue this conversation")
    p.add_argument("--use-async", action="store_true", help="use astream instead of stream")
    args = p.parse_args(argv)
    *images, question = args.image
    # An in-memory checkpointer keeps the thread for this process; use "sqlite" or a
    # postgresql:// DSN to keep conversations across restarts.
    graph = build_graph(AgentContext(llm=args.llm, checkpoint="memory"))
    thread = args.thread or uuid.uuid4().hex

    if args.use_async:

        async def run() -> None:
            async for event in astream_events(graph, images, question, thread):
                sys.stdout.write(json.dumps(event, default=str) + "\n")

        asyncio.run(run())
    else:
        for event in stream_events(graph, images, question, thread):
            sys.stdout.write(json.dumps(event, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
