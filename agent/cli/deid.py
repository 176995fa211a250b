"""``medloop deid IN OUT``: de-identify a DICOM file or folder (DICOM PS3.15 Basic Profile).

Pseudonyms are keyed by the site secret (``MEDLOOP_DEID_SECRET``, else ``$MEDLOOP_HOME/
site_secret``): the same study gets the same pseudonymous UIDs and date shift every time, in
every process, so a prior study still matches a current one; ``--random`` makes this run's
mapping unlinkable instead. Pixel data is not changed: the summary says so, because burned-in
text survives this step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.options import BadInput, context, emit_json
from tools.ingest.deid import DeidReport, deidentify_file, deidentify_tree, new_anonymizer

__all__ = ["add_parser", "cmd_deid"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``deid`` to ``sub`` (an argparse subparsers object)."""
    de = sub.add_parser("deid", help="de-identify a DICOM file or folder (PS3.15 Basic Profile)")
    de.add_argument("input", metavar="IN")
    de.add_argument("output", metavar="OUT")
    de.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    de.add_argument("--random", action="store_true",
                    help="random pseudonyms for this run (not linkable to other runs)")
    de.add_argument("--json", action="store_true")
    de.set_defaults(func=cmd_deid)
    return de


def _print_reports(reports: list[DeidReport], warnings: list[str], elapsed_s: float) -> None:
    """One line per file, the warnings, and a closing count, for people."""
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
    done = sum(not r.skipped for r in reports)
    sys.stdout.write(
        f"{done} file(s) de-identified, {len(reports) - done} skipped, {elapsed_s} s. "
        "Pixel data is unchanged: check it for burned-in text.\n"
    )


def cmd_deid(args: argparse.Namespace) -> int:
    """De-identify IN into OUT (a folder keeps its layout); non-DICOM files are skipped."""
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise BadInput(f"{src.name}: not found")
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise BadInput("OUT must differ from IN and must not lie inside it")
    t0 = time.perf_counter()
    key = None if args.random else context({}, checkpoint=None).site_key()
    anonymizer = new_anonymizer(key=key) if key is not None else None
    if src.is_dir():
        reports = deidentify_tree(src, dst, anonymizer)
    else:
        out = dst / src.name if dst.is_dir() else dst
        if out.exists() and not args.overwrite:
            raise BadInput(f"{out.name}: already exists (use --overwrite)")
        reports = [deidentify_file(src, out, anonymizer)]
    done = [r for r in reports if not r.skipped]
    warnings = sorted({w for r in done for w in r.warnings})
    elapsed = round(time.perf_counter() - t0, 3)
    if not args.json:
        _print_reports(reports, warnings, elapsed)
        return 0
    emit_json({
        "files": len(done),
        "skipped": [r.source for r in reports if r.skipped],
        "changed": sum(r.changed for r in done),
        "removed": sum(r.removed for r in done),
        "private_removed": sum(r.private_removed for r in done),
        "warnings": warnings,
        "elapsed_s": elapsed,
        "reports": [r.as_dict() for r in reports],
    })
    return 0
