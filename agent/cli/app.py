"""``medloop app``: start the web app (the same as ``python app.py``).

The one upward import in medloop: the command line (``agent``) starting the web app
(``webapp``, the layer above it). It is deferred to the moment the command runs, so the CLI
never loads Gradio otherwise, and it is named in pyproject's import-linter contract
(``agent.cli.app -> webapp.**``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "cmd_app", "webapp_argv"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``app`` to ``sub`` (an argparse subparsers object)."""
    web = sub.add_parser("app", help="start the web app on http://127.0.0.1:7860")
    web.add_argument("--port", type=int, help="default 7860 (or GRADIO_SERVER_PORT)")
    web.add_argument("--llm", help="planner backend spec (default: $MEDLOOP_LLM, else embedded)")
    web.add_argument("--max-rounds", type=int, metavar="N",
                     help="planner calls per question (default 5)")
    web.add_argument("--auth", help="user:password[,user2:password2] (or MEDLOOP_AUTH)")
    web.add_argument("--max-upload-mb", type=float, help="upload size limit (default 100)")
    web.set_defaults(func=cmd_app)
    return web


def webapp_argv(args: argparse.Namespace) -> list[str]:
    """The web app's own command line for the options given (unset ones are left to it)."""
    given = {"--port": args.port, "--llm": args.llm, "--max-rounds": args.max_rounds,
             "--auth": args.auth, "--max-upload-mb": args.max_upload_mb}
    return [part for flag, value in given.items() if value is not None
            for part in (flag, str(value))]


def cmd_app(args: argparse.Namespace) -> int:
    """Start the app; blocks until it is stopped."""
    from webapp.launch import main as run_webapp  # the deferred upward import (module docstring)

    run_webapp(webapp_argv(args))
    return 0
