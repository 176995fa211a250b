"""``medloop inspect IMAGE``: load an image the way the agent does and print what it sees.

The summary is de-identified (``tools.ingest.loader`` keeps no patient identifiers), so it is
safe to paste into an issue.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.options import emit
from tools.ingest.loader import load_image
from tools.store import make_ref

__all__ = ["add_parser", "cmd_inspect"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``inspect`` to ``sub`` (an argparse subparsers object)."""
    ins = sub.add_parser("inspect", help="load an image and print its de-identified summary")
    ins.add_argument("image")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)
    return ins


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the image's id, format, modality, shapes, spacing (mm) and kept metadata."""
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
    emit(out, args.json)
    return 0
