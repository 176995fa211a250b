"""Case metadata in SQLite, beside the vector files of a case library.

One row per case; its integer ``id`` is the FAISS id of the case's image vector and of its
report vector (a case may have either or both). Labels are also kept one per row in
``case_labels`` so that label filters are an indexed lookup. The database runs in WAL mode, so
readers in other processes keep reading while a writer adds.

Thumbnails are small PNGs (longest side ``THUMB_PX``) stored in the row, so the agent can show a
retrieved case without the original file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["THUMB_PX", "CaseRecord", "MetadataDB", "decode_thumbnail", "encode_thumbnail"]

THUMB_PX = 96

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    case_id TEXT UNIQUE NOT NULL,
    image TEXT,
    report TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    modality TEXT,
    thumbnail BLOB,
    has_image INTEGER NOT NULL DEFAULT 0,
    has_text INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS case_labels (id INTEGER NOT NULL, label TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS case_labels_label ON case_labels(label);
CREATE INDEX IF NOT EXISTS case_labels_id ON case_labels(id);
CREATE INDEX IF NOT EXISTS cases_modality ON cases(modality);
"""


@dataclass
class CaseRecord:
    """One case: an image (path or id) and/or a report, with labels and modality.

    ``labels`` are lower-cased findings or categories ("cardiomegaly", "chest"); ``modality``
    is the DICOM modality code upper-cased ("CR", "CT", "MR") or None.
    """

    case_id: str
    image: str | None = None
    report: str | None = None
    labels: list[str] = field(default_factory=list)
    modality: str | None = None
    thumbnail: bytes | None = None
    id: int = -1
    has_image: bool = False
    has_text: bool = False


def encode_thumbnail(display: np.ndarray) -> bytes:
    """A PNG of ``display`` (uint8 grey or RGB) with its longest side at most ``THUMB_PX``."""
    import io

    from PIL import Image

    im = Image.fromarray(np.asarray(display, np.uint8))
    im.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def decode_thumbnail(data: bytes) -> np.ndarray:
    """The uint8 array of a thumbnail PNG."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


class MetadataDB:
    """The ``cases`` table: thread-safe (one connection behind a lock), WAL mode."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def insert(self, records: Sequence[CaseRecord]) -> None:
        """Insert records (their ``id`` must be set) in one transaction."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    cur.execute(
                        "INSERT INTO cases (id, case_id, image, report, labels, modality, "
                        "thumbnail, has_image, has_text) VALUES (?,?,?,?,?,?,?,?,?)",
                        (r.id, r.case_id, r.image, r.report, json.dumps(r.labels), r.modality,
                         r.thumbnail, int(r.has_image), int(r.has_text)))
                    cur.executemany("INSERT INTO case_labels (id, label) VALUES (?, ?)",
                                    [(r.id, lab) for lab in r.labels])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def delete(self, ids: Iterable[int]) -> None:
        """Delete rows by id."""
        rows = [(int(i),) for i in ids]
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany("DELETE FROM cases WHERE id = ?", rows)
            cur.executemany("DELETE FROM case_labels WHERE id = ?", rows)
            cur.execute("COMMIT")

    def ids_for_case_ids(self, case_ids: Sequence[str]) -> dict[str, int]:
        """``case_id -> id`` for those that exist."""
        out: dict[str, int] = {}
        with self._lock:
            for cid in case_ids:
                row = self._conn.execute("SELECT id FROM cases WHERE case_id = ?",
                                         (cid,)).fetchone()
                if row:
                    out[cid] = int(row[0])
        return out

    def all_case_ids(self) -> set[str]:
        """Every case id present."""
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT case_id FROM cases")}

    def rows_with(self, column: str) -> np.ndarray:
        """Ids of cases with an image (``has_image``) or a report vector (``has_text``)."""
        if column not in ("has_image", "has_text"):
            raise ValueError(column)
        with self._lock:
            rows = self._conn.execute(f"SELECT id FROM cases WHERE {column} = 1").fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def max_id(self) -> int:
        """The largest id used (-1 when empty)."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(id) FROM cases").fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    def count(self) -> int:
        """Number of cases."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    def get(self, ids: Sequence[int], with_thumbnail: bool = False) -> dict[int, CaseRecord]:
        """Records by id (missing ids are left out)."""
        cols = "id, case_id, image, report, labels, modality, has_image, has_text" + (
            ", thumbnail" if with_thumbnail else "")
        out: dict[int, CaseRecord] = {}
        with self._lock:
            for i in ids:
                row = self._conn.execute(f"SELECT {cols} FROM cases WHERE id = ?",
                                         (int(i),)).fetchone()
                if row is None:
                    continue
                out[int(i)] = CaseRecord(
                    id=int(row[0]), case_id=row[1], image=row[2], report=row[3],
                    labels=json.loads(row[4]), modality=row[5], has_image=bool(row[6]),
                    has_text=bool(row[7]), thumbnail=row[8] if with_thumbnail else None)
        return out

    def filter_ids(self, modality: str | None = None,
                   labels: Sequence[str] | None = None) -> np.ndarray | None:
        """Ids matching the filters (modality exact, any of ``labels``); None when no filter."""
        if not modality and not labels:
            return None
        sql = "SELECT DISTINCT c.id FROM cases c"
        args: list[str] = []
        where = []
        if labels:
            sql += " JOIN case_labels l ON l.id = c.id"
            where.append("l.label IN (" + ",".join("?" * len(labels)) + ")")
            args += [lab.lower() for lab in labels]
        if modality:
            where.append("UPPER(c.modality) = ?")
            args.append(modality.upper())
        sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def label_counts(self) -> dict[str, int]:
        """How many cases carry each label."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT label, COUNT(*) FROM case_labels GROUP BY label").fetchall()
        return {r[0]: int(r[1]) for r in rows}
