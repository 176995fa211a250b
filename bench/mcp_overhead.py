"""What a tool call costs over MCP, against the same call in process, measured in one run.

The tool is ``describe_image`` on pydicom's 128 x 128 ``CT_small.dcm``: cheap enough that the
transport, not the tool, dominates. Rows:

* in process: ``tool.invoke`` on the tool ``default_tools`` builds (the baseline);
* ``McpService.call`` in process: the MCP server's own work (argument handling, the worker
  thread, evidence to MCP content) without a transport;
* over stdio and over streamable HTTP: an ``mcp`` SDK client calling a real ``medloop mcp``
  process, the image given by id (already stored);
* the other direction, ``agent.mcp``: medloop's planner-side wrapper (``remote_tools``) calling
  a ``medloop mcp`` stdio server, which also sends the image as a PNG each call and the server
  ingests it.

Run: ``.venv/bin/python bench/mcp_overhead.py [--calls 40]``. Prints median and 90th percentile
milliseconds per call and the ratio of medians to the in-process call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from agent import AgentContext  # noqa: E402
from agent.mcp import close_all, remote_tools  # noqa: E402
from agent.mcp_server.server import McpService  # noqa: E402
from agent.planner.toolset import default_tools  # noqa: E402
from tests.agent.mcp.procs import free_port, offline_env, start, stop, wait_ready  # noqa: E402
from tools.ingest import ingest_path  # noqa: E402

CT = get_testdata_file("CT_small.dcm")
SERVE = [sys.executable, "-m", "agent.cli", "mcp", "--checkpoint", "none"]


def timed(fn: Callable[[], Any], calls: int, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


async def atimed(fn: Callable[[], Awaitable[Any]], calls: int, warmup: int = 3) -> list[float]:
    """``timed`` for a coroutine function, on the running loop."""
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def over_session(session: ClientSession, calls: int) -> list[float]:
    """Seconds per ``describe_image`` call over ``session``, the image sent once first."""
    await session.initialize()
    data = base64.b64encode(Path(CT).read_bytes()).decode()  # HTTP takes no paths
    first = await session.call_tool("describe_image", {"image": {"base64": data}})
    assert not first.isError, first.content
    image = {"id": first.structuredContent["image"]["id"]}

    async def one() -> None:
        res = await session.call_tool("describe_image", {"image": image})
        assert not res.isError, res.content

    return await atimed(one, calls)


def main(argv: list[str] | None = None) -> int:
    """Time every row and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40)
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="medloop-bench-mcp-"))
    env = offline_env(MEDLOOP_HOME=str(home))
    ctx = AgentContext(home=home, checkpoint=None)
    tools = {t.name: t for t in default_tools(ctx)}
    image_id = ingest_path(ctx.store, CT)[1][0].id
    rows: list[tuple[str, list[float]]] = []

    rows.append(("in process: tool.invoke (baseline)",
                 timed(lambda: tools["describe_image"].invoke({"image_id": image_id}),
                       args.calls)))
    service = McpService(ctx, tools=list(tools.values()))
    rows.append(("McpService.call, no transport",
                 asyncio.run(atimed(lambda: service.call("describe_image",
                                                         {"image": {"id": image_id}}),
                                    args.calls))))

    params = StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=env, cwd=str(ROOT))

    async def stdio() -> list[float]:
        with open(os.devnull, "w") as quiet:
            async with stdio_client(params, errlog=quiet) as (r, w), ClientSession(r, w) as s:
                return await over_session(s, args.calls)

    rows.append(("MCP stdio: SDK client -> medloop mcp", asyncio.run(stdio())))

    port, log = free_port(), home / "http.log"
    proc = start([*SERVE, "--transport", "http", "--port", str(port)], log, env)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/mcp", log, 120)

        async def http() -> list[float]:
            async with (streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w, _),
                        ClientSession(r, w) as s):
                return await over_session(s, args.calls)

        rows.append(("MCP streamable HTTP: SDK client -> medloop mcp", asyncio.run(http())))
    finally:
        stop(proc)

    settings = {"mcpServers": {"medloop": {"command": SERVE[0], "args": SERVE[1:],
                                           "env": {k: env[k] for k in ("MEDLOOP_HOME",
                                                                       "PYTHONPATH")},
                                           "cwd": str(ROOT), "prefix": "remote_"}}}
    remote = {t.name: t for t in remote_tools(settings, ctx.store, taken=list(tools))}
    rows.append(("agent.mcp wrapper -> medloop mcp stdio (image sent as PNG)",
                 timed(lambda: remote["remote_describe_image"].invoke({"image_id": image_id}),
                       args.calls)))
    close_all()

    base = statistics.median(rows[0][1])
    load = os.getloadavg()
    print(f"describe_image on CT_small.dcm (128x128), {args.calls} calls per row after 3 "
          f"warm-up calls; load average {load[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| path | median ms | p90 ms | x in process |")
    print("|---|---:|---:|---:|")
    for name, times in rows:
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"| {name} | {med * 1e3:.2f} | {p90 * 1e3:.2f} | {med / base:.1f} |")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
