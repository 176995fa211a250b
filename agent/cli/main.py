"""The ``medloop`` command line.

Exit codes: 0 success, 2 bad input (one line naming the problem on stderr), 1 internal error.
Progress goes to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tools.errors import IngestError, MedloopError

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

DISCLAIMER = "medloop is research software, not a medical device; do not use it for diagnosis."


class BadInput(Exception):
    """A problem with what the user passed; reported in one line with exit code 2."""


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(_human(data) + "\n")


def _human(data: Any) -> str:
    if isinstance(data, dict) and "answer" in data:
        lines = [str(data["answer"]), ""]
        lines.append(
            f"confidence {data['confidence']:.2f}" + ("  (abstained)" if data["abstained"] else "")
        )
        for f in data["findings"]:
            lines.append(f"- {f['statement']} [{', '.join(f['evidence_ids'])}]")
        for e in data["evidence"]:
            lines.append(f"  {e['id']} {e['tool']} ({e['status']}): {e['summary']}")
        for c in data.get("contradictions") or []:
            lines.append(f"! {c}")
        lines.append(f"thread {data['thread']}  ·  {DISCLAIMER}")
        return "\n".join(lines)
    return json.dumps(data, indent=2, default=str)


def _progress(event: dict[str, Any]) -> None:
    for node, update in event.items():
        if not isinstance(update, dict):
            continue
        for step in update.get("trace") or []:
            if step.get("step") == "think":
                calls = ", ".join(step.get("calls") or []) or "a reply"
                msg = (
                    f"think  round {step.get('round')}: {calls} ({step.get('elapsed_s', 0):.1f} s)"
                )
            elif step.get("step") == "act":
                msg = f"act    {step['tool']} → {step['status']} ({step.get('elapsed_s', 0):.2f} s)"
            elif step.get("step") == "rethink":
                msg = (
                    f"rethink {step.get('decision')}: {len(step.get('problems') or [])} problem(s)"
                )
            else:
                msg = str(step.get("step") or node)
            sys.stderr.write(f"[medloop] {msg}\n")
            sys.stderr.flush()


def add_planner_options(p: argparse.ArgumentParser) -> None:
    """The planner settings ``ask`` and ``eval`` share (``planner_settings`` reads them)."""
    p.add_argument("--max-rounds", type=int, default=5)
    p.add_argument("--route-tools", type=int, metavar="K",
                   help="offer the planner only the K tools that best match the question "
                        "(0: every tool; default: 2 for the embedded planner, all for others)")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="sample N more answers and pool their agreement into the confidence "
                        "(self-consistency at answer time; N more planner calls)")
    p.add_argument("--sample-temperature", type=float, default=0.7, metavar="T")


def planner_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``AgentContext`` keywords from ``add_planner_options``; BadInput names a bad value."""
    settings = {"max_rounds": args.max_rounds, "route_tools": args.route_tools,
                "answer_samples": args.samples, "sample_temperature": args.sample_temperature}
    from agent.context import AgentContext

    try:
        AgentContext(checkpoint=None, **settings)  # its checks, before any model loads
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    return settings


def cmd_ask(args: argparse.Namespace) -> int:
    """Run the agent once and print its answer."""
    from agent.build import build_graph
    from agent.checkpoint import check_spec
    from agent.context import AgentContext
    from agent.llm import parse_spec

    if len(args.items) < 2:
        raise BadInput("ask needs at least one IMAGE and a QUESTION")
    *images, question = args.items
    if not question.strip():
        raise BadInput("the question is empty")
    try:
        parse_spec(args.llm)
        check_spec(args.checkpoint)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    ctx = AgentContext(llm=args.llm, checkpoint=args.checkpoint, **planner_settings(args))
    graph = build_graph(ctx)
    thread = args.thread or uuid.uuid4().hex[:12]
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    t0 = time.perf_counter()
    if not args.quiet:
        sys.stderr.write(f"[medloop] thinking with {args.llm} …\n")
    for event in graph.stream(
        {"messages": [("user", question)], "images": images}, config, stream_mode="updates"
    ):
        if not args.quiet:
            _progress(event)
    state = graph.get_state(config).values
    answer = state["answer"]
    turn = state.get("turn")
    out = {
        "answer": answer.text,
        "confidence": round(answer.confidence, 4),
        "abstained": answer.abstained,
        "findings": [f.model_dump() for f in answer.findings],
        "contradictions": answer.contradictions,
        "budget_exhausted": answer.budget_exhausted,
        "evidence": [e.model_dump(mode="json") for e in state.get("evidence") or []],
        "images": [r.model_dump(mode="json") for r in state.get("image_refs") or []],
        "trace": [t for t in state.get("trace") or [] if t.get("turn") == turn],
        "thread": thread,
        "llm": args.llm,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    _emit(out, args.json)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Load an image the way the agent does and print what it sees."""
    from tools.ingest.loader import load_image
    from tools.store import make_ref

    img = load_image(args.image)
    ref = make_ref(img.content_id(), img)
    out = {
        "id": ref.id,
        "source_format": img.source_format,
        "modality": ref.modality,
        "shape": list(img.pixels.shape),
        "display_shape": list(img.display.shape),
        "dtype": str(img.pixels.dtype),
        "spacing_mm": list(img.spacing_mm) if img.spacing_mm else None,
        "spacing_source": img.spacing_source,
        "metadata": img.meta,
        "notes": img.notes,
        "summary": ref.summary,
    }
    _emit(out, args.json)
    return 0


def cmd_deid(args: argparse.Namespace) -> int:
    """De-identify a DICOM file or folder (PS3.15 Basic Profile); pixel data is not changed."""
    from pathlib import Path

    from tools.ingest.deid import deidentify_file, deidentify_tree

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise BadInput(f"{src.name}: not found")
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise BadInput("OUT must differ from IN and must not lie inside it")
    t0 = time.perf_counter()
    if src.is_dir():
        reports = deidentify_tree(src, dst)
    else:
        out = dst / src.name if dst.is_dir() else dst
        if out.exists() and not args.overwrite:
            raise BadInput(f"{out.name}: already exists (use --overwrite)")
        reports = [deidentify_file(src, out)]
    done = [r for r in reports if not r.skipped]
    skipped = [r.source for r in reports if r.skipped]
    warnings = sorted({w for r in done for w in r.warnings})
    elapsed = round(time.perf_counter() - t0, 3)
    if args.json:
        summary = {
            "files": len(done),
            "skipped": skipped,
            "changed": sum(r.changed for r in done),
            "removed": sum(r.removed for r in done),
            "private_removed": sum(r.private_removed for r in done),
            "warnings": warnings,
            "elapsed_s": elapsed,
            "reports": [r.as_dict() for r in reports],
        }
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    for r in reports:
        if r.skipped:
            why = r.warnings[0] if r.warnings else "skipped"
            sys.stdout.write(f"{r.source}: {why}\n")
        else:
            remapped = ", UIDs remapped" if r.uids_remapped else ""
            sys.stdout.write(
                f"{r.source} -> {r.output}: {r.changed} values replaced, {r.removed} removed, "
                f"{r.private_removed} private removed{remapped}\n"
            )
    for w in warnings:
        sys.stdout.write(f"! {w}\n")
    sys.stdout.write(
        f"{len(done)} file(s) de-identified, {len(skipped)} skipped, {elapsed} s. "
        "Pixel data is unchanged: check it for burned-in text.\n"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the model registry: every default and configured model, none loaded."""
    from tools.models.registry import VisionConfig, models

    try:
        config = VisionConfig.from_env()
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    rows = models(config)
    if args.json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return 0
    for r in rows:
        size = f"{r.size_mb:.1f} MB" if r.size_mb is not None else "size unknown"
        where = "offline" if r.offline else "NOT available offline"
        tag = "default" if r.default else "configured"
        sys.stdout.write(f"{r.name} ({tag}): {r.task}\n  {r.source}; {r.licence}; {size}; "
                         f"{r.device}; {where}{'; loaded' if r.loaded else ''}; {r.note}\n")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Build or search a case library (``retrievers/``)."""
    from agent.cli.index import emit, run_index
    from retrievers.library import EmbedderMismatch
    from tools.errors import ToolInputError

    try:
        emit(run_index(args), args.json)
    except (ToolInputError, EmbedderMismatch) as exc:  # the user's to fix
        raise BadInput(str(exc)) from exc
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Start the Gradio app (same as ``python app.py``)."""
    import app

    app.main([*(["--port", str(args.port)] if args.port else []), "--llm", args.llm,
              *(["--auth", args.auth] if args.auth else []),
              *(["--max-upload-mb", str(args.max_upload_mb)] if args.max_upload_mb else [])])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(
        prog="medloop", description=f"Medical image Q&A agent. {DISCLAIMER}"
    )
    sub = p.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about one or more images")
    ask.add_argument("items", nargs="+", metavar="IMAGE... QUESTION")
    ask.add_argument(
        "--llm",
        default="embedded",
        help="embedded | openai:MODEL@BASE_URL | openai-json:MODEL@BASE_URL | hf:ID_OR_PATH",
    )
    ask.add_argument("--thread", help="continue this conversation thread")
    add_planner_options(ask)
    ask.add_argument(
        "--checkpoint",
        default="sqlite",
        help="sqlite | sqlite:PATH | memory | none | postgresql://DSN",
    )
    ask.add_argument("--json", action="store_true", help="print JSON")
    ask.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ask.set_defaults(func=cmd_ask)

    ins = sub.add_parser("inspect", help="load an image and print its de-identified summary")
    ins.add_argument("image")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    de = sub.add_parser("deid", help="de-identify a DICOM file or folder (PS3.15 Basic Profile)")
    de.add_argument("input", metavar="IN")
    de.add_argument("output", metavar="OUT")
    de.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    de.add_argument("--json", action="store_true")
    de.set_defaults(func=cmd_deid)

    mod = sub.add_parser("models", help="list the models: licence, size, device, offline")
    mod.add_argument("--json", action="store_true")
    mod.set_defaults(func=cmd_models)

    web = sub.add_parser("app", help="start the web app on http://127.0.0.1:7860")
    web.add_argument("--port", type=int)
    web.add_argument("--llm", default="embedded")
    web.add_argument("--auth", help="user:password[,user2:password2] (or MEDLOOP_AUTH)")
    web.add_argument("--max-upload-mb", type=float, help="upload size limit (default 100)")
    web.set_defaults(func=cmd_app)

    from agent.cli.index import add_index_parser

    add_index_parser(sub).set_defaults(func=cmd_index)

    from agent.cli.eval import add_eval_parser

    add_eval_parser(sub)
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
        if os.environ.get("MEDLOOP_DEBUG"):
            traceback.print_exc()
        kind = "" if isinstance(exc, MedloopError) else f"internal error ({type(exc).__name__}): "
        sys.stderr.write(f"medloop: {kind}{exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
