"""A case library: images and reports, their vectors in FAISS, their metadata in SQLite.

On disk, a library is a folder::

    INDEX/manifest.json   format version, the embedders' identities, index parameters
    INDEX/cases.sqlite    one row per case (``retrievers.metadata``)
    INDEX/image.vec       image vectors (``retrievers.index.VectorIndex``), FAISS id = row id
    INDEX/text.vec        report vectors, same ids

A library refuses to be opened with embedders other than the ones it was built with
(``EmbedderMismatch``): vectors from two models are not comparable.

Searches: image→image (``search_image``), text→report→the cases' images (``search_text``), and
text→image in one space when the image embedder is an image–text model (``OpenClipEmbedder``).
Filters by modality and labels; every hit carries its cosine score.

Crash safety: vectors are checkpointed to their files (atomic rename) and rows committed to
SQLite; on opening, rows without vectors and vectors without rows are dropped, so a build
killed at any moment resumes from its last checkpoint (``build_from_dir`` skips case ids that
are already in).
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrievers.embedders import (
    Embedder,
    MedSamImageEmbedder,
    MiniLMTextEmbedder,
    OpenClipEmbedder,
    image_embedder_by_name,
)
from retrievers.index import IndexKind, IndexParams, VectorIndex, choose_kind
from retrievers.metadata import CaseRecord, MetadataDB, encode_thumbnail
from tools.errors import MedloopError, ToolFailure, ToolInputError

__all__ = [
    "FORMAT_VERSION",
    "CaseHit",
    "CaseLibrary",
    "EmbedderMismatch",
    "NewCase",
    "embedder_from_identity",
]

FORMAT_VERSION = 1


class EmbedderMismatch(MedloopError, ValueError):
    """The library was built with another embedder; its vectors cannot be compared."""


@dataclass
class NewCase:
    """A case to add: a display image (uint8) and/or a report, with its metadata.

    ``image`` is the path or id to show for it; ``display`` the pixels to embed (not stored,
    only a thumbnail is).
    """

    case_id: str
    display: np.ndarray | None = None
    image: str | None = None
    report: str | None = None
    labels: list[str] = field(default_factory=list)
    modality: str | None = None


@dataclass(frozen=True)
class CaseHit:
    """One retrieved case.

    ``score`` is the cosine similarity in [-1, 1] in the space named by ``via`` (``image``:
    image→image; ``report``: text→report; ``text-image``: text→image in a shared space).
    """

    case_id: str
    score: float
    via: str
    image: str | None
    report: str | None
    labels: list[str]
    modality: str | None
    row_id: int

    def as_dict(self) -> dict[str, Any]:
        """The CLI's JSON shape (``shared/CONTRACTS.md``) plus labels and modality."""
        return {"case_id": self.case_id, "score": round(self.score, 6), "image": self.image,
                "report": self.report, "labels": self.labels, "modality": self.modality,
                "via": self.via}


def embedder_from_identity(ident: dict[str, Any] | None) -> Embedder | None:
    """The embedder an index names in its manifest (None for none)."""
    if not ident:
        return None
    name = str(ident["name"])
    if name == MedSamImageEmbedder.name:
        return MedSamImageEmbedder()
    if name == MiniLMTextEmbedder.name:
        return MiniLMTextEmbedder()
    if name.startswith("open_clip:"):
        return OpenClipEmbedder(name.removeprefix("open_clip:"))
    try:  # the pooled LiteMedSAM / EfficientNet / baseline image embedders
        return image_embedder_by_name(name)
    except ValueError:
        raise EmbedderMismatch(f"the library was built with an unknown embedder {name!r}") from None


def _ident(e: Embedder | None) -> dict[str, Any] | None:
    return dict(e.identity) if e is not None else None


class CaseLibrary:
    """Build, grow, search and persist a case library in ``root``."""

    def __init__(self, root: Path, image_embedder: Embedder | None,
                 text_embedder: Embedder | None, image_index: VectorIndex | None,
                 text_index: VectorIndex | None, manifest: dict[str, Any],
                 writable: bool = True) -> None:
        self.root = root
        self.writable = writable
        self._lock_file: Any = None
        if writable:
            self._lock_file = (root / "write.lock").open("w")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise ToolInputError(f"{root}: another process is writing this library; "
                                     "open it read-only") from None
        self.image_embedder = image_embedder
        self.text_embedder = text_embedder
        self.image_index = image_index
        self.text_index = text_index
        self.manifest = manifest
        self.db = MetadataDB(root / "cases.sqlite")
        self._write_lock = threading.Lock()
        self._next_id = 0

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, image_embedder: Embedder | None = None,
               text_embedder: Embedder | None = None, kind: IndexKind | Literal["auto"] = "auto",
               expected: int = 0, **index_options: Any) -> CaseLibrary:
        """A new, empty library in ``root`` (which must not hold one already).

        ``kind`` ``auto`` picks by ``expected`` size (``choose_kind``); ``index_options`` go to
        ``IndexParams`` (``nlist``, ``nprobe``, ``pq_m``, ``hnsw_m``, ``ef_search``).
        """
        root = Path(root)
        if (root / "manifest.json").exists():
            raise ToolInputError(f"{root} already holds a case library; open it instead")
        if image_embedder is None and text_embedder is None:
            raise ValueError("a library needs an image embedder, a text embedder or both")
        root.mkdir(parents=True, exist_ok=True)
        real_kind: IndexKind = choose_kind(expected) if kind == "auto" else kind

        def make(e: Embedder | None) -> VectorIndex | None:
            if e is None:
                return None
            return VectorIndex(IndexParams(dim=int(e.identity["dim"]), kind=real_kind,
                                           expected=expected, **index_options))

        manifest = {"format": FORMAT_VERSION, "image_embedder": _ident(image_embedder),
                    "text_embedder": _ident(text_embedder), "kind": real_kind}
        lib = cls(root, image_embedder, text_embedder, make(image_embedder),
                  make(text_embedder), manifest)
        lib.save()
        return lib

    @classmethod
    def open(cls, root: str | Path, image_embedder: Embedder | None = None,
             text_embedder: Embedder | None = None, writable: bool = False) -> CaseLibrary:
        """Open a saved library; embedders default to the ones its manifest names.

        Read-only by default: many readers (threads or processes) may search while one writer
        (``writable=True``, an exclusive file lock) adds. A writer first drops what an
        interrupted write left half done; a reader only ever sees complete cases.

        Raises ``EmbedderMismatch`` when a given embedder is not the one the library was built
        with, ``FileNotFoundError`` when ``root`` holds no library.
        """
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"{root}: no case library here (manifest.json missing)")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise EmbedderMismatch(f"{root}: library format {manifest.get('format')} is not "
                                   f"{FORMAT_VERSION}; rebuild it")
        embedders: list[Embedder | None] = []
        for key, given in (("image_embedder", image_embedder), ("text_embedder", text_embedder)):
            want = manifest.get(key)
            if given is None:
                embedders.append(embedder_from_identity(want))
                continue
            have = _ident(given)
            if want is None or have != want:
                raise EmbedderMismatch(
                    f"{root}: the {key.replace('_', ' ')} was {want and want['name']!r} "
                    f"(dim {want and want['dim']}), not {given.name!r} (dim {given.dim}); "
                    "rebuild the library with this embedder")
            embedders.append(given)
        image_index = VectorIndex.load(root / "image.vec") if manifest["image_embedder"] \
            else None
        text_index = VectorIndex.load(root / "text.vec") if manifest["text_embedder"] else None
        lib = cls(root, embedders[0], embedders[1], image_index, text_index, manifest, writable)
        if writable:
            lib._reconcile()
        return lib

    @classmethod
    def open_or_create(cls, root: str | Path, image_embedder: Embedder | None = None,
                       text_embedder: Embedder | None = None, **create_options: Any) -> CaseLibrary:
        """``open`` if ``root`` holds a library, else ``create``."""
        if (Path(root) / "manifest.json").exists():
            return cls.open(root, image_embedder, text_embedder, writable=True)
        return cls.create(root, image_embedder, text_embedder, **create_options)

    def _reconcile(self) -> None:
        """Drop rows without their vectors and vectors without rows (an interrupted write)."""
        orphans: set[int] = set()
        for index, column in ((self.image_index, "has_image"), (self.text_index, "has_text")):
            if index is None:
                continue
            live = index.ids()
            rows = self.db.rows_with(column)
            orphans.update(np.setdiff1d(rows, live).tolist())
            stray = np.setdiff1d(live, self.db.rows_with(column))
            if len(stray):
                index.remove(stray)
        if orphans:
            self.db.delete(sorted(orphans))
            for index in (self.image_index, self.text_index):
                if index is not None:
                    index.remove(sorted(orphans))
        self._next_id = self._max_used_id() + 1

    def _max_used_id(self) -> int:
        top = self.db.max_id()
        for index in (self.image_index, self.text_index):
            if index is not None:
                with index.lock.read():
                    ids = index._all_ids_locked()
                if len(ids):
                    top = max(top, int(ids.max()))
        return top

    # -- persistence -------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint: vector files (atomic renames) and the manifest.

        Rows are committed as they are added; the order does not matter because opening
        reconciles both.
        """
        self._check_writable()
        if self.image_index is not None:
            self.image_index.save(self.root / "image.vec")
        if self.text_index is not None:
            self.text_index.save(self.root / "text.vec")
        tmp = self.root / ".manifest.json.tmp"
        tmp.write_text(json.dumps(self.manifest, indent=2))
        tmp.replace(self.root / "manifest.json")

    def close(self) -> None:
        """Close the metadata database and release the write lock."""
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def _check_writable(self) -> None:
        if not self.writable:
            raise ToolInputError(f"{self.root}: opened read-only; open with writable=True")

    # -- changes -----------------------------------------------------------------------------
    def add(self, cases: Sequence[NewCase], save: bool = True) -> list[int]:
        """Embed and add ``cases``; returns their row ids. Case ids must be new.

        Images are embedded with the image embedder, reports with the text embedder (a case
        without an image, or a library without that embedder, gets no vector of that kind).
        """
        if not cases:
            return []
        known = self.db.ids_for_case_ids([c.case_id for c in cases])
        if known:
            raise ToolInputError(f"case ids already in the library: {sorted(known)[:5]}")
        img_vecs = self.embed_case_images(cases)
        txt_vecs = self.embed_case_reports(cases)
        return self.add_embedded(cases, img_vecs, txt_vecs, save=save)

    def embed_case_images(self, cases: Sequence[NewCase]) -> np.ndarray | None:
        """Image vectors of the cases that have a display (in order), or None."""
        with_img = [c.display for c in cases if c.display is not None]
        if self.image_embedder is None or not with_img:
            return None
        return self.image_embedder.embed_images(with_img)

    def embed_case_reports(self, cases: Sequence[NewCase]) -> np.ndarray | None:
        """Report vectors of the cases that have a report (in order), or None."""
        with_txt = [c.report for c in cases if c.report]
        if self.text_embedder is None or not with_txt:
            return None
        # Identical reports (many normal studies read alike) are embedded once.
        unique = sorted(set(with_txt))
        vecs = self.text_embedder.embed_texts(unique)
        row = {t: i for i, t in enumerate(unique)}
        return vecs[[row[t] for t in with_txt]]

    def add_embedded(self, cases: Sequence[NewCase], img_vecs: np.ndarray | None,
                     txt_vecs: np.ndarray | None, save: bool = True) -> list[int]:
        """Add cases whose vectors were computed already (see ``embed_case_*``)."""
        self._check_writable()
        with self._write_lock:
            ids = list(range(self._next_id, self._next_id + len(cases)))
            self._next_id += len(cases)
            records = []
            img_ids, txt_ids = [], []
            for rid, c in zip(ids, cases, strict=True):
                has_img = c.display is not None and img_vecs is not None
                has_txt = bool(c.report) and txt_vecs is not None
                if has_img:
                    img_ids.append(rid)
                if has_txt:
                    txt_ids.append(rid)
                records.append(CaseRecord(
                    id=rid, case_id=c.case_id, image=c.image, report=c.report,
                    labels=sorted({lab.strip().lower() for lab in c.labels if lab.strip()}),
                    modality=c.modality.upper() if c.modality else None,
                    thumbnail=encode_thumbnail(c.display) if c.display is not None else None,
                    has_image=has_img, has_text=has_txt))
            if img_ids and self.image_index is not None and img_vecs is not None:
                self.image_index.add(img_vecs, img_ids)
            if txt_ids and self.text_index is not None and txt_vecs is not None:
                self.text_index.add(txt_vecs, txt_ids)
            self.db.insert(records)
            if save:
                self.save()
            return ids

    def delete(self, case_ids: Sequence[str], save: bool = True) -> int:
        """Delete cases by case id; returns how many existed."""
        self._check_writable()
        with self._write_lock:
            found = self.db.ids_for_case_ids(case_ids)
            rows = sorted(found.values())
            for index in (self.image_index, self.text_index):
                if index is not None and rows:
                    index.remove(rows)
            self.db.delete(rows)
            if save and rows:
                self.save()
            return len(rows)

    def __len__(self) -> int:
        return self.db.count()

    def case_ids(self) -> set[str]:
        """Every case id in the library."""
        return self.db.all_case_ids()

    # -- search ------------------------------------------------------------------------------
    def search_image(self, display: np.ndarray | None = None, k: int = 5, *,
                     vector: np.ndarray | None = None, modality: str | None = None,
                     labels: Sequence[str] | None = None) -> list[CaseHit]:
        """Cases whose images are most similar to ``display`` (or a precomputed ``vector``)."""
        if self.image_index is None or self.image_embedder is None:
            raise ToolInputError("this library has no image index")
        if vector is None:
            if display is None:
                raise ToolInputError("give an image or a vector")
            vector = self.image_embedder.embed_images([display])
        return self._search(self.image_index, vector, k, modality, labels, "image")

    def search_text(self, text: str, k: int = 5, *, modality: str | None = None,
                    labels: Sequence[str] | None = None,
                    target: Literal["auto", "reports", "images"] = "auto") -> list[CaseHit]:
        """Cases for a text query.

        ``reports``: the query is matched against report texts (text→report, and the hits carry
        their cases' images). ``images``: text→image in the image embedder's shared space
        (image–text models only). ``auto``: images when that space exists, else reports.
        """
        if not text.strip():
            raise ToolInputError("the text query is empty")
        shared = self.image_embedder is not None and self.image_embedder.shared_space
        if target == "images" or (target == "auto" and shared):
            if not shared or self.image_index is None or self.image_embedder is None:
                raise ToolInputError("text→image search needs an image–text embedder "
                                     "(open_clip); this library's image embedder is image-only")
            vec = self.image_embedder.embed_texts([text])
            return self._search(self.image_index, vec, k, modality, labels, "text-image")
        if self.text_index is None or self.text_embedder is None:
            raise ToolFailure("this library has no report index (it was built without reports)")
        vec = self.text_embedder.embed_texts([text])
        return self._search(self.text_index, vec, k, modality, labels, "report")

    def _search(self, index: VectorIndex, vector: np.ndarray, k: int, modality: str | None,
                labels: Sequence[str] | None, via: str) -> list[CaseHit]:
        if k < 1:
            raise ToolInputError("k must be at least 1")
        allowed = self.db.filter_ids(modality, labels)
        scores, ids = index.search(vector.reshape(1, -1), k, allowed=allowed)
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        records = self.db.get([i for _, i in found])
        return [CaseHit(case_id=r.case_id, score=s, via=via, image=r.image, report=r.report,
                        labels=r.labels, modality=r.modality, row_id=i)
                for s, i in found if (r := records.get(i)) is not None]

    def thumbnail(self, row_id: int) -> bytes | None:
        """The stored PNG thumbnail of a case, if it has an image."""
        rec = self.db.get([row_id], with_thumbnail=True).get(row_id)
        return rec.thumbnail if rec else None

    def stats(self) -> dict[str, Any]:
        """Counts, dimensions and index kinds (the ``medloop index build`` summary)."""
        return {
            "path": str(self.root),
            "cases": len(self),
            "image_vectors": len(self.image_index) if self.image_index is not None else 0,
            "report_vectors": len(self.text_index) if self.text_index is not None else 0,
            "image_embedder": self.manifest.get("image_embedder"),
            "text_embedder": self.manifest.get("text_embedder"),
            "index_type": self.manifest.get("kind"),
        }
