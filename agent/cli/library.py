"""``medloop library train INDEX``: fit the library's trained heads and its answer model.

Light classifiers (logistic regression on the library's frozen image embeddings, probabilities
calibrated out of fold: ``retrievers.heads``) for every label task the library's cases carry
(modality, organ, plane, any label a site adds), saved as ``INDEX/heads.json``. With them the
library serves ``classify`` (trained heads outrank the kNN vote; a configured model outranks
both) when it is the run's library (``MEDLOOP_LIBRARY``). A library built from question-answer
pairs also gets its yes/no answer model (``retrievers.answer_model``, ``INDEX/answer_model.json``),
which ``case_answer`` uses for yes/no questions, and its table of the kinds of question the
cases answer better than the commonest answer (``retrievers.reliability``,
``INDEX/reliability.json``): ``case_answer`` withholds answers of the other kinds.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.options import BadInput, emit_json
from retrievers import answer_model, reliability
from retrievers.heads import train_and_save
from retrievers.library import EmbedderMismatch
from retrievers.vqa_library import open_case_library
from tools.errors import ToolInputError

__all__ = ["add_parser", "cmd_library"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``library`` and its subcommands to ``sub`` (an argparse subparsers object)."""
    lib = sub.add_parser("library", help="train classifiers on a case library's labels")
    lsub = lib.add_subparsers(dest="library_command", required=True)
    t = lsub.add_parser("train", help="fit a classifier head per label task, saved with it")
    t.add_argument("index", metavar="INDEX")
    t.add_argument("--task", action="append", metavar="TASK",
                   help="only this label task (repeatable; default: every task)")
    t.add_argument("--json", action="store_true")
    lib.set_defaults(func=cmd_library)
    return lib


def cmd_library(args: argparse.Namespace) -> int:
    """Train and save the heads; print their summary (classes, counts, temperature)."""
    try:
        lib = open_case_library(args.index, writable=True)
    except FileNotFoundError as exc:
        raise BadInput(f"{args.index}: not a case library ({exc.filename or exc})") from exc
    except (ToolInputError, EmbedderMismatch) as exc:
        raise BadInput(str(exc)) from exc
    try:
        summary = train_and_save(lib, args.task or None)
        if not args.task:
            summary["answer_model"] = answer_model.train_and_save(lib)
            summary["reliability"] = reliability.train_and_save(lib)
        emit_json(summary)
    except (ToolInputError, ValueError) as exc:
        raise BadInput(str(exc)) from exc
    finally:
        lib.close()
    return 0
