"""A FAISS vector index with external int64 ids, deletion, filters, and one-file persistence.

Vectors are L2-normalised on the way in, so inner product is cosine similarity and scores lie
in [-1, 1]. Kinds:

* ``flat``  — exact inner product (``IndexFlatIP``): the default, and right below ~100k vectors.
* ``hnsw``  — ``IndexHNSWFlat`` (M=32): approximate, no training, fast; memory
  ``4·d + 8·M`` bytes per vector (plus ids). FAISS cannot delete from HNSW, so deletions here
  are tombstones excluded at search time (``compact()`` rebuilds without them). HNSW inserts
  run in parallel, so the same additions can link the graph slightly differently run to run.
* ``ivf``   — ``IndexIVFFlat`` with ``nlist`` ≈ 4·√n lists; needs training, so vectors added
  before there are enough to train on wait in an exact staging index that searches merge in.
* ``ivfpq`` — ``IndexIVFPQ`` (``m`` sub-quantisers of 8 bits): compressed, for many millions.

``choose_kind(n)`` picks by expected size. When faiss sees a GPU (faiss-gpu), unfiltered searches
of flat and IVF indexes run on a GPU copy that is refreshed after changes.

Filtered searches (allowed ids) are exact over the allowed vectors when there are few of them
(HNSW graphs and IVF lists lose recall under a selective filter), else use FAISS's ID
selectors. All methods are thread-safe: searches share a read lock, changes take a write lock.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrievers.embedders import l2_normalise

__all__ = ["IndexParams", "RWLock", "VectorIndex", "choose_kind"]

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")

# Below this many allowed ids a filtered search is done exactly over just those vectors.
_EXACT_FILTER_MAX = 50_000
# Flat searches of at most this many queries over at least this many floats (32 MB) use one
# BLAS mat-vec (see ``_flat_few``). Below that FAISS's own loop is fast, and mixing numpy's BLAS
# threads with FAISS's OpenMP threads on few cores costs more than it saves.
_FEW_QUERIES = 8
_BLAS_MIN_FLOATS = 8_000_000


def choose_kind(n_expected: int) -> IndexKind:
    """Exact up to 100k vectors; HNSW up to 2M; IVF up to 20M; IVF-PQ beyond (memory)."""
    if n_expected <= 100_000:
        return "flat"
    if n_expected <= 2_000_000:
        return "hnsw"
    if n_expected <= 20_000_000:
        return "ivf"
    return "ivfpq"


@dataclass
class IndexParams:
    """How the FAISS index is built and searched.

    ``nlist``: IVF lists (None: 4·√expected, at least 16). ``nprobe``: lists visited per query
    (None: nlist/8). ``pq_m``: IVF-PQ sub-quantisers (must divide ``dim``; None: dim/8 capped
    at 64) of ``pq_bits`` bits each. ``hnsw_m``: HNSW links per node. ``ef_search``: HNSW
    search breadth.
    """

    dim: int
    kind: IndexKind = "flat"
    expected: int = 0
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int = 8
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 80

    def resolved_nlist(self, n: int) -> int:
        """Lists for an IVF index trained on ``n`` vectors."""
        if self.nlist:
            return int(self.nlist)
        return int(max(16, min(65_536, 4 * np.sqrt(max(n, self.expected, 1)))))


class RWLock:
    """Many readers or one writer.

    Writers wait for readers to leave; no starvation guard, as a library is written rarely.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        """Shared access."""
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Exclusive access."""
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _faiss() -> Any:
    import faiss

    return faiss


def _ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


class VectorIndex:
    """Unit vectors keyed by int64 ids, searchable by inner product (cosine)."""

    def __init__(self, params: IndexParams) -> None:
        if params.kind not in KINDS:
            raise ValueError(f"unknown index kind {params.kind!r}; choose one of {KINDS}")
        self.params = params
        self.lock = RWLock()
        self._index: Any = None  # the main FAISS index (trained, for IVF kinds)
        self._staging: Any = None  # exact IndexIDMap2 for IVF vectors waiting for training
        self._deleted: set[int] = set()  # HNSW tombstones
        self._gpu: Any = None
        self._gpu_dirty = True
        self._id_cache: np.ndarray | None = None  # flat: external ids by row
        if params.kind in ("flat", "hnsw"):
            self._index = self._new_main(0)
        else:
            self._staging = self._new_flat()

    # -- construction ------------------------------------------------------------------------
    def _new_flat(self) -> Any:
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.params.dim))

    def _new_main(self, n_train: int) -> Any:
        faiss = _faiss()
        p = self.params
        if p.kind == "flat":
            return self._new_flat()
        if p.kind == "hnsw":
            h = faiss.IndexHNSWFlat(p.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = p.ef_construction
            h.hnsw.efSearch = p.ef_search
            return faiss.IndexIDMap2(h)
        nlist = p.resolved_nlist(n_train)
        quantizer = faiss.IndexFlatIP(p.dim)
        if p.kind == "ivf":
            ivf = faiss.IndexIVFFlat(quantizer, p.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = p.pq_m or _default_pq_m(p.dim)
            if p.dim % m:
                raise ValueError(f"pq_m={m} must divide the dimension {p.dim}")
            ivf = faiss.IndexIVFPQ(quantizer, p.dim, nlist, m, p.pq_bits,
                                   faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = p.nprobe or max(1, nlist // 8)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct/remove by id
        return ivf

    @property
    def trained(self) -> bool:
        """False while IVF vectors wait in the staging index for enough data to train on."""
        return self._index is not None

    def _train_size(self) -> int:
        nlist = self.params.resolved_nlist(0)
        return max(30 * nlist, 1_000)

    def train(self, sample: np.ndarray) -> None:
        """Train an IVF index now on ``sample`` ``(n, dim)`` and move staged vectors into it."""
        with self.lock.write():
            self._train_locked(l2_normalise(sample))

    def _train_locked(self, sample: np.ndarray) -> None:
        if self._index is not None:
            return
        main = self._new_main(len(sample))
        main.train(sample)
        if self._staging is not None and self._staging.ntotal:
            ids = _faiss().vector_to_array(self._staging.id_map).astype(np.int64)
            vecs = self._staging.index.reconstruct_n(0, self._staging.ntotal)
            main.add_with_ids(vecs, ids)
        self._index, self._staging = main, None
        self._gpu_dirty = True
        self._id_cache = None

    # -- changes -----------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray) -> None:
        """Add ``vectors`` ``(n, dim)`` (normalised here) under ``ids`` (unique int64)."""
        x = l2_normalise(vectors)
        id_arr = _ids(ids)
        if x.shape[1] != self.params.dim:
            raise ValueError(f"vectors have dimension {x.shape[1]}, the index {self.params.dim}")
        if len(id_arr) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(id_arr)} ids")
        if not len(x):
            return
        with self.lock.write():
            if self._deleted and np.isin(id_arr, _ids(sorted(self._deleted))).any():
                raise ValueError("ids of deleted vectors cannot be reused in an HNSW index")
            if self._index is None:
                self._staging.add_with_ids(x, id_arr)
                if self._staging.ntotal >= self._train_size():
                    sample = self._staging.index.reconstruct_n(0, self._staging.ntotal)
                    self._train_locked(sample)
            else:
                self._index.add_with_ids(x, id_arr)
            self._gpu_dirty = True
            self._id_cache = None

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Delete ``ids``; returns how many were present (HNSW: tombstoned)."""
        id_arr = _ids(ids)
        with self.lock.write():
            present = set(self._all_ids_locked().tolist())
            hit = [int(i) for i in id_arr if int(i) in present and int(i) not in self._deleted]
            if not hit:
                return 0
            arr = _ids(hit)
            if self.params.kind == "hnsw":
                self._deleted.update(hit)
            else:
                target = self._index if self._index is not None else self._staging
                target.remove_ids(arr)
            self._gpu_dirty = True
            self._id_cache = None
            return len(hit)

    def compact(self) -> None:
        """Rebuild an HNSW index without its tombstoned vectors (others: nothing to do)."""
        with self.lock.write():
            if self.params.kind != "hnsw" or not self._deleted:
                return
            ids = self._all_ids_locked()
            keep = np.array([i not in self._deleted for i in ids.tolist()], bool)
            vecs = np.stack([self._index.reconstruct(int(i)) for i in ids[keep]]) if keep.any() \
                else np.zeros((0, self.params.dim), np.float32)
            fresh = self._new_main(0)
            if len(vecs):
                fresh.add_with_ids(vecs, ids[keep])
            self._index, self._deleted = fresh, set()
            self._gpu_dirty = True
            self._id_cache = None

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        with self.lock.read():
            return self._count_locked()

    def _count_locked(self) -> int:
        n = (self._index.ntotal if self._index is not None else 0) + (
            self._staging.ntotal if self._staging is not None else 0)
        return int(n) - len(self._deleted)

    def ids(self) -> np.ndarray:
        """Every live id (int64), in no particular order."""
        with self.lock.read():
            all_ids = self._all_ids_locked()
            if self._deleted:
                all_ids = all_ids[~np.isin(all_ids, _ids(sorted(self._deleted)))]
            return all_ids

    def _all_ids_locked(self) -> np.ndarray:
        faiss = _faiss()
        parts = []
        for idx in (self._index, self._staging):
            if idx is None:
                continue
            if isinstance(idx, faiss.IndexIDMap2):
                parts.append(faiss.vector_to_array(idx.id_map).astype(np.int64))
            else:  # IVF: ids live in the inverted lists
                inv = idx.invlists
                for lst in range(idx.nlist):
                    size = inv.list_size(lst)
                    if size:
                        parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` ``(n, dim)`` (IVF-PQ: the decoded approximation)."""
        with self.lock.read():
            return self._reconstruct_locked(_ids(ids))

    def _reconstruct_locked(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.params.dim), np.float32)
        staged: set[int] = set()
        if self._staging is not None and self._staging.ntotal:
            staged = set(_faiss().vector_to_array(self._staging.id_map).tolist())
        for row, i in enumerate(ids.tolist()):
            src = self._staging if i in staged else self._index
            out[row] = src.reconstruct(int(i))
        return out

    def search(self, queries: np.ndarray, k: int,
               allowed: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine for each query row: ``(scores, ids)``, both ``(q, k)``.

        Missing results (fewer than ``k`` live or allowed vectors) have id -1 and score -inf.
        ``allowed`` restricts the results to those ids (metadata filters).
        """
        q = l2_normalise(queries)
        if q.shape[1] != self.params.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.params.dim}")
        k = int(k)
        with self.lock.read():
            if allowed is not None:
                allowed_arr = _ids(allowed)
                if self._deleted:
                    allowed_arr = allowed_arr[~np.isin(allowed_arr, _ids(sorted(self._deleted)))]
                return self._search_allowed(q, k, allowed_arr)
            results = []
            with _one_thread_if(len(q) == 1):
                if self._index is not None and self._index.ntotal:
                    results.append(self._search_main(q, k))
                if self._staging is not None and self._staging.ntotal:
                    results.append(self._staging.search(q, k))
            if len(results) == 1 and results[0][1].shape[1] == k:
                # One sorted result set (the usual case): only mark what is missing. This
                # skips _merge's sort, which costs more than an HNSW search of 10k vectors.
                scores, ids = results[0]
                if (ids < 0).any():
                    scores = np.where(ids < 0, np.float32(-np.inf), scores)
                return scores, ids
            return _merge(results, len(q), k)

    def _search_main(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        if (self.params.kind == "flat" and len(q) <= _FEW_QUERIES
                and self._index.ntotal * self.params.dim >= _BLAS_MIN_FLOATS
                and self._gpu_index() is None):
            return self._flat_few(q, k)
        if self._deleted:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(_ids(sorted(self._deleted))))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.params.ef_search)
            return self._index.search(q, k, params=params)
        gpu = self._gpu_index()
        return (gpu or self._index).search(q, k)

    def _flat_few(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search for a few queries as one BLAS mat-vec over FAISS's own storage.

        FAISS sends fewer than 20 queries down a path that gives each query one thread, which
        on a 1M x 512 index is ~2.5x slower than the memory-bound mat-vec; numpy's BLAS uses
        every core. The matrix is viewed, not copied (the read lock keeps it in place).
        """
        faiss = _faiss()
        n = int(self._index.ntotal)
        flat = faiss.downcast_index(self._index.index)
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * self.params.dim).reshape(n, self.params.dim)
        if self._id_cache is None or len(self._id_cache) != n:
            self._id_cache = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        sims = xb @ q.T  # (n, q)
        kk = min(k, n)
        top = np.argpartition(-sims, kk - 1, axis=0)[:kk] if kk < n else \
            np.broadcast_to(np.arange(n)[:, None], (n, len(q)))
        top_s = np.take_along_axis(sims, top, 0)
        order = np.argsort(-top_s, axis=0, kind="stable")
        rows = np.take_along_axis(top, order, 0).T  # (q, kk)
        return np.take_along_axis(top_s, order, 0).T, self._id_cache[rows]

    def _search_allowed(self, q: np.ndarray, k: int,
                        allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(allowed):
            return _merge([], len(q), k)
        if len(allowed) <= _EXACT_FILTER_MAX or self.params.kind == "flat":
            present = np.intersect1d(allowed, self._all_ids_locked())
            if not len(present):
                return _merge([], len(q), k)
            vecs = self._reconstruct_locked(present)
            sims = q @ vecs.T  # (q, n_allowed)
            top = np.argsort(-sims, axis=1)[:, :k]
            return _merge([(np.take_along_axis(sims, top, 1), present[top])], len(q), k)
        faiss = _faiss()
        sel = faiss.IDSelectorBatch(allowed)
        results = []
        if self._index is not None:
            if self.params.kind == "hnsw":
                params: Any = faiss.SearchParametersHNSW(sel=sel, efSearch=self.params.ef_search)
            else:
                params = faiss.SearchParametersIVF(sel=sel, nprobe=self._index.nprobe)
            results.append(self._index.search(q, k, params=params))
        if self._staging is not None:
            results.append(self._staging.search(q, k, params=faiss.SearchParameters(sel=sel)))
        return _merge(results, len(q), k)

    def _gpu_index(self) -> Any:
        """A GPU copy of a flat or IVF index when faiss has GPUs, else None.

        Refreshed lazily after changes (under the read lock: two readers may both rebuild it,
        which is wasteful but safe). A kind the GPU cloner cannot take stays on the CPU.
        """
        faiss = _faiss()
        if (self.params.kind == "hnsw" or self._gpu is False
                or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1):
            return None
        if self._gpu is None or self._gpu_dirty:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self._index)
            except RuntimeError:
                self._gpu = False  # not supported on the GPU: search on the CPU from now on
                return None
            self._gpu_dirty = False
        return self._gpu

    # -- persistence -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Everything (params, FAISS index, staging, tombstones) as one ``.npz`` payload."""
        faiss = _faiss()
        with self.lock.read():
            arrays: dict[str, np.ndarray] = {
                "params": np.frombuffer(json.dumps(asdict(self.params)).encode(), np.uint8),
                "deleted": _ids(sorted(self._deleted)),
            }
            if self._index is not None:
                arrays["main"] = faiss.serialize_index(self._index)
            if self._staging is not None:
                arrays["staging"] = faiss.serialize_index(self._staging)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        """Write to ``path`` atomically (a temp file renamed over it: readers never see half)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Read an index written by ``save``."""
        faiss = _faiss()
        with np.load(Path(path), allow_pickle=False) as z:
            params = IndexParams(**json.loads(z["params"].tobytes().decode()))
            self = cls.__new__(cls)
            self.params = params
            self.lock = RWLock()
            self._gpu, self._gpu_dirty = None, True
            self._id_cache = None
            self._deleted = set(z["deleted"].tolist())
            self._index = faiss.deserialize_index(z["main"]) if "main" in z else None
            self._staging = faiss.deserialize_index(z["staging"]) if "staging" in z else None
        if self._index is not None and params.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = params.ef_search
        return self


@contextmanager
def _one_thread_if(cond: bool) -> Iterator[None]:
    """Run FAISS single-threaded in this thread while ``cond`` holds.

    One query gains nothing from an OpenMP team, and on a loaded machine starting one costs a
    scheduler slice (~5 ms measured on 2 busy cores, against ~0.05 ms for the HNSW search
    itself). OpenMP's thread count is per calling thread, so other threads are unaffected.
    """
    if not cond:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _default_pq_m(dim: int) -> int:
    for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if m <= max(1, dim // 8) and dim % m == 0:
            return m
    return 1


def _merge(results: list[tuple[np.ndarray, np.ndarray]], nq: int,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k across several result sets; missing entries are (-inf, -1)."""
    scores = np.full((nq, k), -np.inf, np.float32)
    ids = np.full((nq, k), -1, np.int64)
    if not results:
        return scores, ids
    if len(results) == 1:
        s, i = results[0]
        s, i = np.asarray(s, np.float32), np.asarray(i, np.int64)
    else:
        s = np.concatenate([np.asarray(r[0], np.float32) for r in results], axis=1)
        i = np.concatenate([np.asarray(r[1], np.int64) for r in results], axis=1)
    s = np.where(i < 0, -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    n = s.shape[1]
    scores[:, :n], ids[:, :n] = s, np.where(np.isfinite(s), i, -1)
    return scores, ids
