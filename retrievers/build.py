"""``medloop index build DIR``: a case library from a folder, with a progress bar, resumable.

The folder layout (documented in the README):

* ``DIR/cases.csv`` or ``DIR/cases.jsonl`` — one case per row/line with the fields
  ``image`` (a path relative to ``DIR``; optional), ``report`` (text; optional), ``labels``
  (CSV: separated by ``;``; JSON lines: a list or a ``;``-separated string), ``modality``
  (optional; read from the DICOM header when missing) and ``case_id`` (optional; default the
  image path, else ``row-N``). A case needs an image or a report.
* without such a file, every image under ``DIR`` (``.dcm``, ``.dicom``, ``.png``, ``.jpg``,
  ``.jpeg``) is a case, with the text of a ``.txt`` of the same name beside it as its report.

Building is resumable: case ids already in the library are skipped, and the library is
checkpointed every ``checkpoint_s`` seconds, so an interrupted build loses at most that much
work. Images are decoded in a background thread while the previous batch is embedded.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrievers.library import CaseLibrary, NewCase
from tools.errors import IngestError, ToolInputError

__all__ = ["BuildReport", "CaseRow", "build_from_rows", "read_layout"]

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class CaseRow:
    """One row of the layout, before its image is read."""

    case_id: str
    image_path: Path | None
    image: str | None
    report: str | None
    labels: tuple[str, ...] = ()
    modality: str | None = None


@dataclass
class BuildReport:
    """What a build did: counts, time, and the rows it had to skip (with why)."""

    added: int = 0
    already_present: int = 0
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    embed_s: float = 0.0
    stopped: bool = False
    """Asked to stop (``build_from_rows``' ``stop``) before every row was added: not complete."""


def _labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(p.strip() for p in str(value).replace("|", ";").split(";") if p.strip())


def _row(d: dict[str, Any], n: int, root: Path) -> CaseRow:
    img = (d.get("image") or "").strip() or None
    report = (d.get("report") or "").strip() or None
    if img is None and report is None:
        raise ToolInputError(f"row {n}: needs an image or a report")
    return CaseRow(case_id=str(d.get("case_id") or img or f"row-{n}"),
                   image_path=(root / img) if img else None, image=img, report=report,
                   labels=_labels(d.get("labels")), modality=(d.get("modality") or None))


def read_layout(root: str | Path) -> list[CaseRow]:
    """The cases a folder describes (see the module docstring for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise ToolInputError(f"{root}: not a folder")
    if (root / "cases.csv").exists():
        with (root / "cases.csv").open(newline="", encoding="utf-8") as f:
            return [_row(d, n, root) for n, d in enumerate(csv.DictReader(f), start=1)]
    if (root / "cases.jsonl").exists():
        rows = []
        lines = (root / "cases.jsonl").read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(_row(json.loads(line), n, root))
                except json.JSONDecodeError as exc:
                    raise ToolInputError(f"cases.jsonl line {n}: not JSON ({exc.msg})") from exc
        return rows
    rows = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            txt = p.with_suffix(".txt")
            rel = str(p.relative_to(root))
            rows.append(CaseRow(case_id=rel, image_path=p, image=rel,
                                report=txt.read_text(encoding="utf-8").strip() if txt.exists()
                                else None))
    return rows


def _load(row: CaseRow) -> NewCase | str:
    """A ``NewCase`` with its display read, or the reason it cannot be read."""
    display = None
    modality = row.modality
    if row.image_path is not None:
        from tools.ingest.loader import load_image

        try:
            img = load_image(row.image_path)
        except (IngestError, OSError) as exc:
            return f"{row.case_id}: {exc}"
        display = img.display
        modality = modality or img.meta.get("modality")
    return NewCase(case_id=row.case_id, display=display, image=row.image, report=row.report,
                   labels=list(row.labels), modality=modality)


def _batches(rows: Sequence[CaseRow], size: int) -> Iterator[Sequence[CaseRow]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def build_from_rows(lib: CaseLibrary, rows: Sequence[CaseRow], batch_size: int = 16,
                    checkpoint_s: float = 30.0, progress: bool = True,
                    stop: Callable[[], bool] | None = None) -> BuildReport:
    """Add the rows not yet in ``lib``; a tqdm bar on stderr shows progress.

    ``stop()`` is asked before each batch: when true, what was added is saved and the build
    returns with ``stopped`` set (the next build adds the rest).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    rep = BuildReport()
    present = lib.case_ids()
    todo = [r for r in rows if r.case_id not in present]
    rep.already_present = len(rows) - len(todo)
    bar = tqdm(total=len(rows), initial=rep.already_present, unit="case", file=sys.stderr,
               disable=not progress, desc="indexing")
    last_save = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medloop-load") as pool:
        batches = list(_batches(todo, batch_size))
        pending: Future[list[NewCase | str]] | None = (
            pool.submit(lambda b: [_load(r) for r in b], batches[0]) if batches else None)
        for i in range(len(batches)):
            assert pending is not None
            if stop is not None and stop():
                rep.stopped = True
                pending.cancel()
                break
            loaded = pending.result()
            # Decode the next batch while this one is embedded.
            pending = (pool.submit(lambda b: [_load(r) for r in b], batches[i + 1])
                       if i + 1 < len(batches) else None)
            cases = [c for c in loaded if isinstance(c, NewCase)]
            rep.skipped += [c for c in loaded if isinstance(c, str)]
            te = time.perf_counter()
            img_vecs = lib.embed_case_images(cases)
            txt_vecs = lib.embed_case_reports(cases)
            rep.embed_s += time.perf_counter() - te
            lib.add_embedded(cases, img_vecs, txt_vecs, save=False)
            rep.added += len(cases)
            bar.update(len(loaded))
            if time.perf_counter() - last_save > checkpoint_s:
                lib.save()
                last_save = time.perf_counter()
    lib.save()
    bar.close()
    rep.elapsed_s = time.perf_counter() - t0
    return rep
