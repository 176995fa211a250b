"""The web app under load: time from upload to the first streamed trace step, and concurrency.

Starts the app on 127.0.0.1 (a free port; nothing leaves the loopback) and drives it through
Gradio's own client, as a browser session would: upload pydicom-data's chest radiograph
(``RG1_UNCI.dcm``, 1955x1841 CR, 7.2 MB), then ask. Each client is its own session (its own
thread). Measured per session:

* upload: the ``upload`` event (transfer, de-identifying load, storing) until it returns;
* first step: from the start of the upload to the first streamed update of ``ask`` (the
  ingest step of the trace);
* response: from sending the question to the final answer.

The planner is the scripted fake of the tests by default (``--llm scripted``: a region and a
distance measurement, then the answer), so the figures are the app's and the tools' cost, not
an LLM's; ``--llm embedded`` uses the packaged SmolLM2 planner instead.

    nice .venv/bin/python bench/app_latency.py [--sessions 5] [--llm scripted]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(home: Path, llm: str) -> tuple[Any, str]:
    """The app on a free loopback port, with the chosen planner and the basic tools."""
    import app
    from agent import AgentContext
    from tools.store import ImageStore
    from tools.vision.basic import basic_tools

    store = ImageStore(home / "store")
    if llm == "scripted":
        from tests.webapp.helpers import planner

        model: Any = planner()
    else:
        model = llm
    ctx = AgentContext(llm=model, tools=basic_tools(store), home=home, checkpoint="sqlite")
    ctx._store = store
    demo = app.make_app(ctx)
    port = _free_port()
    app.launch(demo, port=port, block=False)
    return demo, f"http://127.0.0.1:{port}/"


def session(url: str, image: str, question: str) -> dict[str, float]:
    """One browser-like session: upload, ask, read the stream to the end."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    t0 = time.perf_counter()
    up = client.predict(files=[handle_file(image)], api_name="/upload")
    t_up = time.perf_counter()
    if "de-identified" not in str(up[1]):
        raise RuntimeError(f"upload failed: {up[1]}")
    job = client.submit(question=question, api_name="/ask")
    t_ask = time.perf_counter()
    first = None
    last: Any = None
    for out in job:
        if first is None and "ingest" in str(out[1]):
            first = time.perf_counter()
        last = out
    t_end = time.perf_counter()
    chat = last[0] if last else []
    if not chat or chat[-1]["role"] != "assistant" or "failed" in str(chat[-1]["content"]):
        raise RuntimeError(f"no answer: {chat}")
    return {
        "upload_s": t_up - t0,
        "first_step_s": (first or t_end) - t0,
        "first_step_after_ask_s": (first or t_end) - t_ask,
        "response_s": t_end - t_ask,
    }


def run_concurrent(url: str, image: str, n: int) -> tuple[list[dict[str, float]], list[str]]:
    """``n`` sessions at once, each in its own thread and its own client session."""
    results: list[dict[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            r = session(url, image, f"Session {i}: how large is the bright region?")
            with lock:
                results.append(r)
        except Exception as exc:  # counted and reported: the benchmark's job is to show them
            with lock:
                errors.append(f"session {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results, errors


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | "
            f"{max(values):.2f} |")


def main() -> None:
    """Print the single-session and concurrent tables."""
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="single-session runs")
    p.add_argument("--llm", default="scripted", help="scripted | embedded | any backend spec")
    args = p.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")  # the client talks to loopback only
    from pydicom.data import get_testdata_file

    image = get_testdata_file("RG1_UNCI.dcm")
    with tempfile.TemporaryDirectory() as tmp:
        demo, url = start_app(Path(tmp), args.llm)
        try:
            single = [session(url, image, "How large is the bright region?")
                      for _ in range(args.repeats)]
            conc, errors = run_concurrent(url, image, args.sessions)
        finally:
            demo.close()
    print(f"planner: {args.llm}; image RG1_UNCI.dcm (7.2 MB); loopback 127.0.0.1\n")
    print(f"Single session ({args.repeats} runs), seconds:\n")
    print("| measure | median | min | max |\n|---|---|---|---|")
    for key in ("upload_s", "first_step_s", "first_step_after_ask_s", "response_s"):
        print(_row(key, [r[key] for r in single]))
    print(f"\n{args.sessions} concurrent sessions: {len(conc)} answered, {len(errors)} errors\n")
    if conc:
        print("| measure | median | min | max |\n|---|---|---|---|")
        for key in ("upload_s", "first_step_s", "response_s"):
            print(_row(key, [r[key] for r in conc]))
    for e in errors:
        print("error:", e)


if __name__ == "__main__":
    main()
