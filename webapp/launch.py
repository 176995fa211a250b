"""Launch: the command line, ``--auth``, and Gradio's launch with medloop's secure defaults.

Secure defaults: 127.0.0.1, no share link, an upload size limit, no file served but Gradio's
own uploads and renderings (no ``allowed_paths``), the LLM backends a browser may choose
limited to those the operator listed at launch (a browser cannot point the server at a URL).
The agent's settings come from ``AgentContext.from_env`` (the ``MEDLOOP_*`` variables) with
the command line's ``--llm`` and ``--max-rounds`` over them; only the app's own options (host,
port, auth, upload limit) are read here.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import gradio as gr

from agent import AgentContext
from webapp.layout import make_app
from webapp.uploads import DEFAULT_MAX_UPLOAD_MB

__all__ = ["launch", "main", "parse_auth"]


def parse_auth(spec: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` pairs, comma-separated (``--auth`` or ``MEDLOOP_AUTH``); None: no auth."""
    if not spec:
        return None
    pairs = [p.split(":", 1) for p in spec.split(",") if ":" in p]
    if not pairs:
        raise SystemExit("--auth expects user:password[,user2:password2]")
    return [(u, p) for u, p in pairs]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="medloop web app (research software)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--llm", default=None,
                   help="planner backend spec (default $MEDLOOP_LLM, else embedded)")
    p.add_argument("--llm-choice", action="append", default=[],
                   help="another backend spec browsers may switch to (repeatable)")
    p.add_argument("--auth", default=os.environ.get("MEDLOOP_AUTH"),
                   help="user:password[,user2:password2]; also MEDLOOP_AUTH")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    p.add_argument("--max-rounds", type=int, default=None,
                   help="planner rounds per question (default 5)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Start the app on 127.0.0.1 (no share link), blocking until it is stopped."""
    args = _parser().parse_args(argv)
    given = {"llm": args.llm, "max_rounds": args.max_rounds}  # None: left to the environment
    ctx = AgentContext.from_env(**{k: v for k, v in given.items() if v is not None})
    demo = make_app(ctx, llm_choices=args.llm_choice, max_upload_mb=args.max_upload_mb)
    launch(demo, args.host, args.port, parse_auth(args.auth), args.max_upload_mb)


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
