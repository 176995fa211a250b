"""VectorIndex: every kind adds, searches, deletes, filters and round-trips through a file."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from retrievers.index import IndexParams, VectorIndex, choose_kind


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 20 centres, so IVF lists and HNSW neighbourhoods mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ x.T
    return ids[np.argsort(-sims, axis=1)[:, :k]]


PARAMS = {
    "flat": IndexParams(dim=32, kind="flat"),
    "hnsw": IndexParams(dim=32, kind="hnsw"),
    "ivf": IndexParams(dim=32, kind="ivf", nlist=16, nprobe=16),
    "ivfpq": IndexParams(dim=32, kind="ivfpq", nlist=16, nprobe=16, pq_m=16, pq_bits=6),
}


@pytest.mark.parametrize("kind", list(PARAMS))
def test_self_query_finds_itself_and_ids_are_external(kind):
    x = _clustered(3000, 32)
    ids = np.arange(1000, 4000, dtype=np.int64)
    index = VectorIndex(PARAMS[kind])
    index.add(x, ids)
    assert index.trained and len(index) == 3000
    scores, found = index.search(x[:50], 5)
    if kind == "ivfpq":  # compressed codes: the source is among the top 5, not always first
        assert np.mean([ids[i] in found[i] for i in range(50)]) >= 0.8
    else:
        assert (found[:, 0] == ids[:50]).all()
        assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("kind", list(PARAMS))
def test_save_load_add_delete_round_trip_is_identical(kind, tmp_path):
    x = _clustered(2500, 32, seed=1)
    q = _clustered(20, 32, seed=2)
    index = VectorIndex(PARAMS[kind])
    index.add(x[:2000], np.arange(2000))
    before = index.search(q, 10)
    index.save(tmp_path / "a.vec")
    loaded = VectorIndex.load(tmp_path / "a.vec")
    after = loaded.search(q, 10)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])

    # The same additions and deletions on both give the same results again.
    for ix in (index, loaded):
        ix.add(x[2000:], np.arange(2000, 2500))
        assert ix.remove(np.arange(0, 2500, 3)) == len(range(0, 2500, 3))
    a, b = index.search(q, 10), loaded.search(q, 10)
    if kind == "hnsw":  # parallel HNSW inserts may link the new vectors differently
        assert np.mean([len(set(r) & set(t)) / 10 for r, t in zip(a[1], b[1], strict=True)]) >= 0.95
    else:
        assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
    assert not np.isin(a[1], np.arange(0, 2500, 3)).any()  # deleted ids never come back
    assert len(loaded) == 2500 - len(range(0, 2500, 3))
    loaded.save(tmp_path / "b.vec")
    again = VectorIndex.load(tmp_path / "b.vec").search(q, 10)
    assert np.array_equal(again[1], b[1])


def test_deleted_hnsw_vectors_are_tombstones_until_compacted():
    x = _clustered(1500, 32, seed=3)
    index = VectorIndex(PARAMS["hnsw"])
    index.add(x, np.arange(1500))
    index.remove([0, 1, 2])
    assert index.search(x[:3], 1)[1][:, 0].tolist() != [0, 1, 2]
    with pytest.raises(ValueError, match="cannot be reused"):
        index.add(x[:1], [1])
    index.compact()
    assert len(index) == 1497 and 0 not in set(index.ids().tolist())


def test_ivf_waits_in_staging_until_it_can_train_and_searches_both():
    x = _clustered(1200, 32, seed=4)
    index = VectorIndex(IndexParams(dim=32, kind="ivf", nlist=32, nprobe=32))
    index.add(x[:500], np.arange(500))
    assert not index.trained  # 30 x nlist = 960 needed
    assert (index.search(x[:5], 1)[1][:, 0] == np.arange(5)).all()
    index.add(x[500:], np.arange(500, 1200))
    assert index.trained and len(index) == 1200
    assert (index.search(x[:5], 1)[1][:, 0] == np.arange(5)).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_is_exact_within_the_allowed_ids(kind):
    x = _clustered(3000, 32, seed=5)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex(PARAMS[kind])
    index.add(x, ids)
    allowed = ids[ids % 7 == 0]
    q = _clustered(10, 32, seed=6)
    _, found = index.search(q, 5, allowed=allowed)
    assert np.array_equal(found, _exact(x[allowed], allowed, q, 5))
    # Fewer allowed than k: the rest is padding (-1).
    _, few = index.search(q[:1], 5, allowed=[3, 10, 99999])
    assert sorted(few[0][:2].tolist()) == [3, 10] and (few[0][2:] == -1).all()


def test_wrong_dimension_and_kind_are_refused():
    index = VectorIndex(IndexParams(dim=8))
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.ones((2, 9), np.float32), [1, 2])
    with pytest.raises(ValueError, match="kind"):
        VectorIndex(IndexParams(dim=8, kind="lsh"))  # type: ignore[arg-type]
    assert choose_kind(10_000) == "flat" and choose_kind(1_000_000) == "hnsw"
    assert choose_kind(50_000_000) == "ivfpq"


def test_concurrent_readers_while_a_writer_adds():
    """Readers never see a torn index: every result is a real id, best first, and the vectors
    that were in from the start are always found for themselves."""
    x = _clustered(4000, 32, seed=7)
    index = VectorIndex(IndexParams(dim=32, kind="hnsw"))
    index.add(x[:500], np.arange(500))
    errors: list[BaseException] = []
    done = threading.Event()
    checks = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                i = rng.integers(0, 500, 8)
                scores, found = index.search(x[i], 5)
                assert (found[:, 0] == i).all()
                assert (found >= 0).all() and (found < 4000).all()
                assert (np.diff(scores, axis=1) <= 1e-6).all()
                checks[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for start in range(500, 4000, 250):
        index.add(x[start:start + 250], np.arange(start, start + 250))
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert checks[0] > 0 and len(index) == 4000
