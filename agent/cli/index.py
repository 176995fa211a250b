"""``medloop index build|search|demo``: the case-library commands (``retrievers/``).

``build DIR --out INDEX`` reads the layout ``retrievers.build`` documents — or a labelled set
of question-answer pairs in the evaluation's JSON-lines format (``items.jsonl``, as the VQA-RAD
dev set: ``retrievers.vqa_library``), which becomes a library the ``case_answer`` tool answers
from — and prints counts, dimensions and the index type;
``search INDEX (--image PATH | --text "...") -k K`` prints
``[{"case_id", "score", "image", "report", ...}]``. Problems the user can fix raise
``ToolInputError`` / ``EmbedderMismatch`` (the CLI turns them into exit code 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import BadInput, context, emit_json
from retrievers.build import build_from_rows, read_layout
from retrievers.demo import demo_library
from retrievers.embedders import (
    Embedder,
    MedSamImageEmbedder,
    MiniLMTextEmbedder,
    OpenClipEmbedder,
    image_embedder_by_name,
)
from retrievers.index import KINDS
from retrievers.library import CaseLibrary, EmbedderMismatch
from retrievers.vqa_library import (
    DEFAULT_IMAGE_EMBEDDER,
    build_vqa_library,
    load_qa,
    vqa_items_file,
)
from tools.errors import ToolInputError
from tools.ingest.loader import load_image

__all__ = ["add_parser", "cmd_index", "emit", "run_index"]


def _embedder(spec: str) -> Embedder | None:
    if spec == "none":
        return None
    if spec == "litemedsam":
        return MedSamImageEmbedder()
    if spec == "minilm":
        return MiniLMTextEmbedder()
    if spec.startswith("open_clip:"):
        return OpenClipEmbedder(spec.removeprefix("open_clip:"))
    raise ToolInputError(f"unknown embedder {spec!r}: litemedsam | minilm | open_clip:SPEC | none")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``index`` and its subcommands to ``sub`` (an argparse subparsers object)."""
    idx = sub.add_parser("index", help="build and search a case library (images + reports)")
    isub = idx.add_subparsers(dest="index_command", required=True)

    b = isub.add_parser("build", help="index a folder (cases.csv / cases.jsonl or images) or a "
                                      "labelled items.jsonl (question-answer pairs)")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("--out", required=True, metavar="INDEX", help="library folder (resumable)")
    b.add_argument("--kind", default="auto", choices=("auto", *KINDS))
    b.add_argument("--image-embedder", default="litemedsam",
                   help="litemedsam | open_clip:SPEC | none")
    b.add_argument("--text-embedder", default="minilm",
                   help="minilm | open_clip:SPEC (same as the image one for a shared space) | none")
    b.add_argument("--json", action="store_true")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = isub.add_parser("search", help="similar cases by image or by text")
    s.add_argument("index", metavar="INDEX")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", metavar="PATH")
    q.add_argument("--text")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--modality")
    s.add_argument("--label")
    s.add_argument("--target", default="auto", choices=("auto", "reports", "images"))
    s.add_argument("--json", action="store_true")

    d = isub.add_parser("demo", help="build (first time) the demo library and print its summary")
    d.add_argument("--json", action="store_true")
    idx.set_defaults(func=cmd_index)
    return idx


def cmd_index(args: argparse.Namespace) -> int:
    """Run one ``index`` subcommand and print its result."""
    try:
        emit(run_index(args), args.json)
    except (ToolInputError, EmbedderMismatch) as exc:  # the user's to fix
        raise BadInput(str(exc)) from exc
    return 0


def run_index(args: argparse.Namespace) -> Any:
    """Run one ``index`` subcommand; returns what the CLI prints."""
    if args.index_command == "build":
        items = vqa_items_file(args.dir)
        if items is not None:
            return _build_from_pairs(items, args)
        rows = read_layout(args.dir)
        if not rows:
            raise ToolInputError(f"{args.dir}: no cases found (see the layout in the README)")
        image_e = _embedder(args.image_embedder)
        text_e = (image_e if args.text_embedder == args.image_embedder and image_e is not None
                  else _embedder(args.text_embedder))
        lib = CaseLibrary.open_or_create(Path(args.out), image_e, text_e, kind=args.kind,
                                         expected=len(rows))
        rep = build_from_rows(lib, rows, progress=not args.quiet)
        return {**lib.stats(), "added": rep.added, "already_present": rep.already_present,
                "skipped": rep.skipped, "elapsed_s": round(rep.elapsed_s, 3)}
    if args.index_command == "search":
        lib = CaseLibrary.open(Path(args.index))
        labels = [args.label] if args.label else None
        if args.image:
            hits = lib.search_image(load_image(args.image).display, args.k,
                                    modality=args.modality, labels=labels)
        else:
            hits = lib.search_text(args.text, args.k, modality=args.modality, labels=labels,
                                   target=args.target)
        return [h.as_dict() for h in hits]
    # the demo library lives in the configured home (MEDLOOP_HOME), as the agent's does
    return demo_library(home=context({}, checkpoint=None).home_dir, progress=True).stats()


def _build_from_pairs(items: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A labelled-case library: one case per image, its question-answer pairs beside it.

    The image embedder defaults to the one measured best for it (``DEFAULT_IMAGE_EMBEDDER``);
    an existing ``--out`` is refused (no resume for this format).
    """
    spec = args.image_embedder
    image_e = (image_embedder_by_name(DEFAULT_IMAGE_EMBEDDER) if spec == "litemedsam"
               else _embedder(spec))
    if image_e is None:
        raise ToolInputError("a library of question-answer pairs needs an image embedder")
    lib = build_vqa_library(items, args.out, image_e)
    try:
        return {**lib.stats(), "pairs": len(load_qa(args.out).items), "source": str(items)}
    finally:
        lib.close()


def emit(data: Any, as_json: bool) -> None:
    """Print JSON, or one line per hit for people."""
    if as_json or not isinstance(data, list):
        emit_json(data)
        return
    for h in data:
        report = (h.get("report") or "").replace("\n", " ")
        sys.stdout.write(f"{h['score']:.3f}  {h['case_id']}  {h.get('image') or ''}  "
                         f"{report[:100]}\n")
