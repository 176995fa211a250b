"""``medloop models``: the model registry, as configured (``MEDLOOP_SEGMENTER`` and friends).

Nothing is loaded: each row says where a model comes from, its licence, size, device and
whether it is available offline.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.options import context, emit_json
from agent.planner.toolset import tool_models

__all__ = ["add_parser", "cmd_models"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``models`` to ``sub`` (an argparse subparsers object)."""
    mod = sub.add_parser("models", help="list the models: licence, size, device, offline")
    mod.add_argument("--json", action="store_true")
    mod.set_defaults(func=cmd_models)
    return mod


def cmd_models(args: argparse.Namespace) -> int:
    """Print every default and configured model, none loaded."""
    rows = tool_models(context({}, checkpoint=None))  # from the tools' own declarations
    if args.json:
        emit_json([r.as_dict() for r in rows])
        return 0
    for r in rows:
        size = f"{r.size_mb:.1f} MB" if r.size_mb is not None else "size unknown"
        where = "offline" if r.offline else "NOT available offline"
        tag = "default" if r.default else "configured"
        sys.stdout.write(f"{r.name} ({tag}): {r.task}\n  {r.source}; {r.licence}; {size}; "
                         f"{r.device}; {where}{'; loaded' if r.loaded else ''}; {r.note}\n")
    return 0
