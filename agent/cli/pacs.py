"""``medloop pacs find``: list the studies on the PACS, to pick one for ``ask --study UID``.

The PACS comes from ``--pacs URL`` or the settings (``MEDLOOP_PACS_URL``, or
``MEDLOOP_PACS_CONFIG``); credentials only from the settings. Listed: the Study Instance UID,
date, modalities, description and counts; never the patient's name, id or birth date, though
``--patient-id`` may narrow the search (it goes to the PACS only).
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.options import BadInput, context, emit, pacs_settings

__all__ = ["add_parser", "cmd_pacs_find"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``pacs`` (with its ``find`` subcommand) to ``sub``."""
    pacs = sub.add_parser("pacs", help="find studies on the PACS (for ask --study)")
    actions = pacs.add_subparsers(dest="pacs_command", required=True)
    find = actions.add_parser("find", help="list studies on the PACS")
    find.add_argument("--pacs", metavar="URL",
                      help="http(s)://HOST/dicom-web or dicom://AET@HOST:PORT "
                           "(default $MEDLOOP_PACS_URL)")
    find.add_argument("--patient-id", help="only this patient's studies")
    find.add_argument("--date", metavar="YYYYMMDD[-YYYYMMDD]", help="study date or range")
    find.add_argument("--modality", help="only studies with this modality (CT, MR, CR, ...)")
    find.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    find.add_argument("--json", action="store_true", help="print JSON")
    find.set_defaults(func=cmd_pacs_find)
    return pacs


def cmd_pacs_find(args: argparse.Namespace) -> int:
    """Print the studies the search finds."""
    from tools.pacs.fetch import find_studies

    if args.limit < 1:
        raise BadInput("--limit must be at least 1")
    config = pacs_settings(context({}), args.pacs)
    filters = {k: v for k, v in (("PatientID", args.patient_id), ("StudyDate", args.date),
                                 ("ModalitiesInStudy", args.modality)) if v}
    studies = find_studies(config, filters, args.limit)
    rows = [{"study_uid": s.study_uid, "date": s.date, "modalities": list(s.modalities),
             "description": s.description, "series": s.n_series, "instances": s.n_instances}
            for s in studies]
    emit(rows, args.json, _table)
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    """One line per study: UID, then what a person picks by."""
    if not rows:
        return "no studies found"
    def count(n: int | None) -> str:
        return "? images" if n is None else f"{n} image{'s' * (n != 1)}"

    return "\n".join(
        f"{r['study_uid']}  {r['date'] or '-':10}  {'/'.join(r['modalities']) or '-':8}  "
        f"{count(r['instances']):>11}  {r['description']}" for r in rows)
