"""The ``medloop`` command line: the parser of every subcommand, ``main()`` and its exit codes.

Exit codes: 0 success, 2 bad input (one line naming the problem on stderr), 1 internal error,
130 interrupted. Each subcommand lives in its own module (``ask``, ``inspect``, ``deid``,
``models``, ``app``, ``index``, ``library``, ``eval``, ``pacs``, ``mcp``) with
``add_parser(sub)``, which sets its ``func``; what they share is in ``agent.cli.options``.
Imports go one way: this module imports the subcommands, the subcommands import ``options``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from agent.cli import app, ask, deid, index, inspect, library, mcp, models, pacs
from agent.cli import eval as evaluate
from agent.cli.options import DISCLAIMER, BadInput
from tools.errors import IngestError, MedloopError

__all__ = ["build_parser", "main"]

# In ``medloop --help`` order.
COMMANDS = (ask, inspect, deid, models, app, index, library, evaluate, pacs, mcp)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(
        prog="medloop", description=f"Medical image Q&A agent. {DISCLAIMER}"
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medloop`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (BadInput, IngestError, FileNotFoundError) as exc:
        sys.stderr.write(f"medloop: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("medloop: interrupted\n")
        return 130
    except Exception as exc:  # exit code 1 is the contract for internal errors
        # MEDLOOP_DEBUG is a front-end switch of this command line (how to report an error),
        # not a run setting, so it is read here rather than by ``AgentContext.from_env``.
        if os.environ.get("MEDLOOP_DEBUG"):
            traceback.print_exc()
        kind = "" if isinstance(exc, MedloopError) else f"internal error ({type(exc).__name__}): "
        sys.stderr.write(f"medloop: {kind}{exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
