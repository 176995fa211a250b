"""What every ``medloop`` subcommand shares: bad input, planner options, settings, ``--json``.

Run settings reach a command one way: ``context(given)`` passes the options the user set to
``AgentContext.from_env`` (the one reader of ``MEDLOOP_*``), so an option left unset lets the
environment, then the dataclass default, decide. Options that map to a setting therefore
default to None on the parser; the help text names the effective default.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from agent.context import AgentContext
from agent.llm import parse_spec

__all__ = [
    "DISCLAIMER",
    "LLM_HELP",
    "BadInput",
    "add_planner_options",
    "checked_llm",
    "context",
    "emit",
    "emit_json",
    "pacs_settings",
    "planner_settings",
]

DISCLAIMER = "medloop is research software, not a medical device; do not use it for diagnosis."
LLM_HELP = ("embedded | embedded:smollm2-135m|qwen2.5-0.5b|qwen2.5-1.5b | gguf:PATH | "
            "openai:MODEL@BASE_URL | openai-json:MODEL@BASE_URL | hf:ID_OR_PATH "
            "(default: $MEDLOOP_LLM, else embedded)")


class BadInput(Exception):
    """A problem with what the user passed; reported in one line with exit code 2."""


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (non-JSON values as their ``str``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(data: Any, as_json: bool, human: Any = None) -> None:
    """``data`` as JSON (``--json``), or as ``human(data)`` text when a formatter is given."""
    if as_json or human is None:
        emit_json(data)
    else:
        sys.stdout.write(str(human(data)) + "\n")


def add_planner_options(p: argparse.ArgumentParser) -> None:
    """The planner settings ``ask`` and ``eval`` share (``planner_settings`` reads them).

    Unset options stay None so ``AgentContext``'s defaults apply.
    """
    p.add_argument("--max-rounds", type=int, metavar="N",
                   help="planner calls per question (default 5)")
    p.add_argument("--route-tools", type=int, metavar="K",
                   help="offer the planner only the K tools that best match the question "
                        "(0: every tool; default: 2 for the embedded planner, all for others)")
    p.add_argument("--no-consult", dest="consult_experts", action="store_false", default=None,
                   help="leave the first call of each question to the planner instead of "
                        "asking the always-offered experts (case_answer) first")
    p.add_argument("--samples", type=int, metavar="N",
                   help="sample N more answers and pool their agreement into the confidence "
                        "(self-consistency at answer time; N more planner calls; default 0)")
    p.add_argument("--sample-temperature", type=float, metavar="T",
                   help="temperature of those samples (default 0.7)")


def planner_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``AgentContext`` field -> value for the planner options of ``add_planner_options``."""
    return {"max_rounds": args.max_rounds, "route_tools": args.route_tools,
            "consult_experts": args.consult_experts,
            "answer_samples": args.samples, "sample_temperature": args.sample_temperature}


def context(given: Mapping[str, Any], **fixed: Any) -> AgentContext:
    """``AgentContext.from_env`` with the options the user set over the environment.

    ``given`` maps fields to option values, None meaning "not set" (dropped, so ``MEDLOOP_*``
    or the default applies); ``fixed`` are the command's own choices and pass as they are
    (``checkpoint=None`` means no persistence). A bad value, given or from the environment,
    becomes ``BadInput`` naming it, before any model loads.
    """
    try:
        return AgentContext.from_env(**{k: v for k, v in given.items() if v is not None},
                                     **fixed)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc


def pacs_settings(ctx: AgentContext, url: str | None) -> Any:
    """The PACS settings of ``ctx`` (``--pacs`` ``url`` over them); BadInput when none or bad."""
    try:
        config = ctx.pacs(url)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if config is None:
        raise BadInput("no PACS configured: pass --pacs URL or set MEDLOOP_PACS_URL "
                       "(or a url in MEDLOOP_PACS_CONFIG)")
    return config


def checked_llm(ctx: AgentContext) -> str:
    """The planner spec of ``ctx`` (from ``--llm`` or ``MEDLOOP_LLM``), checked."""
    spec = str(ctx.llm)
    try:
        parse_spec(spec)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    return spec
