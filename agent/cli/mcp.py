"""``medloop mcp``: serve medloop's tools, and the agent as ``ask``, over MCP.

``--transport stdio`` (the default) is for a host that starts the server itself (Claude
Desktop, an IDE): the protocol runs over stdin / stdout, and images may be given by any local
path. ``--transport http`` serves streamable HTTP at ``http://HOST:PORT/mcp``; a remote caller
then sends images as base64 (or a PACS study), and ``path`` is refused unless ``--path-root``
names the folders it may read. The settings are the usual ones (``MEDLOOP_*``, ``--llm``); the
served tools and ``ask`` share one image store, so an id one call returns works in the next.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.options import LLM_HELP, BadInput, checked_llm, context

__all__ = ["add_parser", "cmd_mcp"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``mcp`` to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("mcp", help="serve the tools and the agent over the Model Context "
                                   "Protocol (stdio or streamable HTTP)")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                   help="stdio (default: the host starts the server) or http")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    p.add_argument("--path-root", action="append", default=None, metavar="FOLDER",
                   help="over HTTP, let image paths under FOLDER be read (repeatable; "
                        "default: no paths over HTTP; over stdio any path)")
    p.add_argument("--llm", help=LLM_HELP)
    p.add_argument("--checkpoint",
                   help="where ask keeps its threads: sqlite (default) | sqlite:PATH | memory "
                        "| none | postgresql://DSN")
    p.add_argument("--tool-timeout", type=float, default=None, metavar="S",
                   help="time limit of one tool call, seconds (default 60; the first call of a "
                        "tool also loads its model)")
    p.add_argument("--ask-timeout", type=float, default=None, metavar="S",
                   help="time limit of one ask, seconds (default 900)")
    p.set_defaults(func=cmd_mcp)
    return p


def cmd_mcp(args: argparse.Namespace) -> int:
    """Build the served tools, then serve until the host closes the connection or Ctrl-C."""
    import anyio

    from agent.checkpoint import check_spec
    from agent.mcp_server.server import (
        DEFAULT_ASK_TIMEOUT_S,
        McpService,
        build_server,
        serve_http,
        serve_stdio,
    )

    if args.transport == "stdio" and args.path_root:
        raise BadInput("--path-root is for --transport http (over stdio any path is read)")
    if not 0 < args.port < 65536:
        raise BadInput(f"--port must be 1 to 65535, not {args.port}")
    for flag, value in (("--ask-timeout", args.ask_timeout), ("--tool-timeout", args.tool_timeout)):
        if value is not None and value <= 0:
            raise BadInput(f"{flag} must be positive")
    roots: list[Path] | None = None
    if args.transport == "http":
        roots = [Path(r).expanduser() for r in args.path_root or []]
        missing = [str(r) for r in roots if not r.is_dir()]
        if missing:
            raise BadInput(f"--path-root is not a folder: {', '.join(missing)}")
    ctx = context({"llm": args.llm, "checkpoint": args.checkpoint,
                   "tool_timeout_s": args.tool_timeout})
    checked_llm(ctx)
    try:
        check_spec(ctx.checkpoint)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    service = McpService(ctx, path_roots=roots, open_pacs=args.transport == "stdio",
                         ask_timeout_s=args.ask_timeout or DEFAULT_ASK_TIMEOUT_S)
    server = build_server(service)
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    else:
        anyio.run(serve_http, server, args.host, args.port)
    return 0
