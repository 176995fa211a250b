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

The same graph behind the LangGraph server, with the ``langgraph-sdk`` client instead of
in-process calls (``remote_events``): ``langgraph dev`` reads ``langgraph.json`` (graph
``medloop`` = ``agent/served.py:graph``, configured by the ``MEDLOOP_*`` environment) and serves
it over HTTP; the events are the same::

    MEDLOOP_LLM=openai:MODEL@http://host/v1 langgraph dev --no-browser --port 2024
    python examples/embed_graph.py chest.dcm "Describe this image" --server http://127.0.0.1:2024

Image paths are read by the server, so they must exist on its machine (a thread keeps the
images of its earlier turns by id). ``langgraph dev`` keeps threads in memory; a deployment
(the ``langgraph build`` image) keeps them in the Postgres of ``DATABASE_URI``.
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

from agent import AgentContext, Answer, build_graph
from tools.evidence import Evidence


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


def remote_events(url: str, images: list[str], question: str,
                  thread: str | None = None, assistant: str = "medloop") -> Iterator[dict]:
    """The same events from the graph behind a LangGraph server, through ``langgraph-sdk``.

    ``thread`` continues a server-side conversation (None starts one; its id is in the
    answer event). ``assistant`` is the graph's name in ``langgraph.json``.
    """
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=url, timeout=600)
    if thread is None:
        thread = str(client.threads.create()["thread_id"])
    else:
        client.threads.create(thread_id=thread, if_exists="do_nothing")
    inputs = {"messages": [{"role": "user", "content": question}], "images": images}
    for part in client.runs.stream(thread, assistant, input=inputs, stream_mode="updates"):
        if part.event == "error":
            raise RuntimeError(f"the server's run failed: {part.data}")
        if part.event != "updates" or not isinstance(part.data, dict):
            continue
        for node, change in part.data.items():
            for step in (change or {}).get("trace") or []:
                yield {"type": "step", "node": node, **step}
    values = client.threads.get_state(thread)["values"]
    yield {**_answer_event(values if isinstance(values, dict) else {}), "thread": thread}


def _answer_event(state: dict[str, Any]) -> dict[str, Any]:
    # In process the state holds pydantic objects; from the server, their JSON.
    answer = state["answer"]
    if not isinstance(answer, Answer):
        answer = Answer.model_validate(answer)
    evidence = [e if isinstance(e, Evidence) else Evidence.model_validate(e)
                for e in state.get("evidence") or []]
    return {
        "type": "answer",
        "text": answer.text,
        "confidence": answer.confidence,
        "abstained": answer.abstained,
        "findings": [c.model_dump() for c in answer.findings],
        "evidence": [
            {"id": e.id, "tool": e.tool, "status": e.status, "summary": e.summary}
            for e in evidence
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Stream one question's events to stdout as JSON lines."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", nargs="+", help="image file(s), then the question")
    p.add_argument("--llm", default="embedded", help="embedded | openai:MODEL@URL | hf:ID")
    p.add_argument("--thread", default=None, help="continue this conversation")
    p.add_argument("--use-async", action="store_true", help="use astream instead of stream")
    p.add_argument("--server", metavar="URL",
                   help="ask the graph behind this LangGraph server (langgraph dev) instead")
    args = p.parse_args(argv)
    *images, question = args.image
    if args.server:
        for event in remote_events(args.server, images, question, args.thread):
            sys.stdout.write(json.dumps(event, default=str) + "\n")
        return 0
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
