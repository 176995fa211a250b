"""Retrieval benchmark: one table, every ratio from the same run.

1. Flat search at N x D float32 (default 1M x 512), one query at a time: FAISS ``IndexFlatIP``
   and medloop's ``VectorIndex`` (flat) against the memory floor measured in the same run — a
   numpy mat-vec over the very same matrix (FAISS's own storage, viewed without a copy).
   Goal: <= 1.25x the floor.
2. ANN on REAL embeddings: MiniLM vectors of the distinct sentences of the NLMCXR report
   corpus (every section), 1,000 held out as queries. HNSW and IVF recall@10 against exact
   flat search, queries/s one query at a time, and bytes per vector (serialised index / n)
   against FAISS's formula. Goal: recall@10 >= 0.95 at >= 10x flat's queries/s.
3. Indexing throughput: ``retrievers.build`` (decode + embed + thumbnail + SQLite + FAISS +
   save) against the bare LiteMedSAM embedder on the same already-decoded images. Goal >= 90 %.

Run: ``nice .venv/bin/python bench/retrieval.py`` (``--n 200000`` for a quick run). The
sentence embeddings are cached in ``$MEDLOOP_HOME/bench/`` after the first run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrievers.index import IndexParams, VectorIndex

ROWS: list[dict] = []


def row(section: str, what: str, value: float, unit: str, ratio: str = "", note: str = "") -> None:
    """Record one table row and print it as it comes."""
    ROWS.append({"section": section, "what": what, "value": value, "unit": unit,
                 "ratio": ratio, "note": note})
    print(f"  {section:6} {what:44} {value:12.4g} {unit:10} {ratio:18} {note}", flush=True)


def _per_query(fn, queries: np.ndarray, repeat: int = 1) -> float:
    """Median seconds per query, one query at a time (first call warms up)."""
    fn(queries[:1])
    times = []
    for _ in range(repeat):
        for i in range(len(queries)):
            t0 = time.perf_counter()
            fn(queries[i:i + 1])
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
def bench_flat(n: int, dim: int, nq: int) -> None:
    """Section 1: flat search against the numpy mat-vec floor over the same matrix.

    The three are timed round-robin, query by query, so that load from other processes on a
    shared machine hits them alike; each figure is the median over ``2 * nq`` queries.
    Memory: two copies of the matrix (FAISS's, and medloop's index's own), 2 x N x D x 4 bytes.
    """
    import faiss

    print(f"flat search, {n} x {dim} float32, one query at a time", flush=True)
    index = faiss.IndexFlatIP(dim)
    vi = VectorIndex(IndexParams(dim=dim, kind="flat"))
    rng = np.random.default_rng(0)
    chunk = 100_000
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        faiss.normalize_L2(x)
        index.add(x)
        vi.add(x, np.arange(start, start + len(x)))
        x = None
    xb = faiss.rev_swig_ptr(index.get_xb(), n * dim).reshape(n, dim)  # a view, no copy
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    faiss.normalize_L2(q)
    runs = {
        "floor": lambda v: xb @ v[0],
        "floor_topk": lambda v: np.argpartition(-(xb @ v[0]), 10)[:10],
        "faiss": lambda v: index.search(v, 10),
        "medloop": lambda v: vi.search(v, 10),
    }
    for fn in runs.values():
        fn(q[:1])  # warm up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(2):
        for i in range(nq):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn(q[i:i + 1])
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    floor = med["floor"]
    row("flat", "numpy mat-vec (memory floor)", floor * 1e3, "ms/query", "1.00x",
        f"{n * dim * 4 / floor / 1e9:.1f} GB/s")
    row("flat", "numpy mat-vec + top-10", med["floor_topk"] * 1e3, "ms/query",
        f"{med['floor_topk'] / floor:.2f}x floor")
    row("flat", "faiss IndexFlatIP k=10 (nq=1 path)", med["faiss"] * 1e3, "ms/query",
        f"{med['faiss'] / floor:.2f}x floor", "one thread per query")
    row("flat", "medloop VectorIndex(flat) k=10", med["medloop"] * 1e3, "ms/query",
        f"{med['medloop'] / floor:.2f}x floor", "goal <= 1.25x")
    xb = index = vi = None  # free the 2 x 2 GiB before the next section
    gc.collect()


# ---------------------------------------------------------------------------------------------
def report_sentences() -> list[str]:
    """Distinct sentences of every section of the NLMCXR reports (order fixed)."""
    from retrievers.demo import _nlmcxr_tgz

    out: set[str] = set()
    with tarfile.open(_nlmcxr_tgz()) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            xml = f.read().decode("utf-8", "replace")
            texts = re.findall(r"<AbstractText[^>]*>(.*?)</AbstractText>", xml, re.S)
            texts += re.findall(r"<caption>(.*?)</caption>", xml, re.S)
            for t in texts:
                for s in re.split(r"(?<=[.!?])\s+", " ".join(t.split())):
                    if len(s) > 3:
                        out.add(s)
    return sorted(out)


def sentence_embeddings() -> np.ndarray:
    """MiniLM vectors of ``report_sentences()`` (cached under the medloop home)."""
    from retrievers.embedders import MiniLMTextEmbedder
    from tools.store import default_home

    cache = default_home() / "bench" / "nlmcxr_sentences_minilm.npy"
    if cache.exists():
        return np.load(cache)
    sents = report_sentences()
    print(f"  embedding {len(sents)} distinct report sentences with MiniLM (cached after)...",
          flush=True)
    t0 = time.perf_counter()
    vecs = MiniLMTextEmbedder(batch_size=128).embed_texts(sents)
    print(f"  ... {time.perf_counter() - t0:.1f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def bench_ann() -> None:
    """Section 2: HNSW / IVF / IVF-PQ recall and speed on real sentence embeddings.

    Every configuration is built first; then the timed queries go round-robin over all of
    them (query i on each configuration in turn), so that bursts of load from other processes
    on a shared machine hit every configuration alike. Figures are medians over 300 queries.
    """
    import faiss

    vecs = sentence_embeddings()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(vecs))
    q, xb = vecs[order[:1000]], vecs[order[1000:]]
    n, dim = xb.shape
    print(f"ANN on {n} real MiniLM report-sentence vectors (d={dim}), 1000 held-out queries",
          flush=True)
    ids = np.arange(n)
    nlist = int(4 * np.sqrt(n))
    configs: list[tuple[str, VectorIndex, dict, str]] = []  # name, index, settings, memory note

    flat = VectorIndex(IndexParams(dim=dim, kind="flat"))
    flat.add(xb, ids)
    configs.append(("flat (exact)", flat, {}, f"{len(flat.to_bytes()) / n:.0f} B/vec vs "
                    f"4d+8={4 * dim + 8}"))
    for m in (16, 32):
        t0 = time.perf_counter()
        hnsw = VectorIndex(IndexParams(dim=dim, kind="hnsw", hnsw_m=m, ef_construction=80))
        hnsw.add(xb, ids)
        note = (f"{len(hnsw.to_bytes()) / n:.0f} B/vec vs ~{4 * dim + 8 * m + 8} "
                f"(4d + 2M int32 links + id); build {time.perf_counter() - t0:.1f} s")
        for ef in (16, 32, 64, 128):
            configs.append((f"HNSW M={m} efSearch={ef}", hnsw, {"ef": ef}, note))
    t0 = time.perf_counter()
    ivf = VectorIndex(IndexParams(dim=dim, kind="ivf", nlist=nlist))
    ivf.train(xb)
    ivf.add(xb, ids)
    note = (f"{len(ivf.to_bytes()) / n:.0f} B/vec vs ~{4 * dim + 8 + 4 * dim * nlist / n:.0f} "
            f"(4d + id + centroids/n); build {time.perf_counter() - t0:.1f} s")
    for nprobe in (4, 8, 16, 32):
        configs.append((f"IVF nlist={nlist} nprobe={nprobe}", ivf, {"nprobe": nprobe}, note))
    pq = VectorIndex(IndexParams(dim=dim, kind="ivfpq", nlist=nlist, pq_m=48))
    pq.train(xb)
    pq.add(xb, ids)
    configs.append((f"IVF-PQ nlist={nlist} m=48x8b nprobe=16", pq, {"nprobe": 16},
                    f"{len(pq.to_bytes()) / n:.0f} B/vec vs ~"
                    f"{48 + 8 + (4 * dim * nlist + 4 * dim * 256) / n:.0f} (m + id + tables/n)"))

    def apply(index: VectorIndex, settings: dict) -> None:
        if "ef" in settings:
            faiss.downcast_index(index._index.index).hnsw.efSearch = settings["ef"]
            index.params.ef_search = settings["ef"]
        if "nprobe" in settings:
            index._index.nprobe = settings["nprobe"]

    # One query at a time runs single-threaded, as medloop's VectorIndex does for one query
    # (an OpenMP team per query costs a scheduler slice on a loaded machine); the bare FAISS
    # column gets the same setting.
    faiss.omp_set_num_threads(1)
    truth = np.stack([flat.search(q[i:i + 1], 10)[1][0] for i in range(len(q))])
    recalls = {}
    for name, index, settings, _ in configs:
        apply(index, settings)
        found = np.stack([index.search(q[i:i + 1], 10)[1][0] for i in range(len(q))])
        recalls[name] = _recall(found, truth)
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    bare: dict[str, list[float]] = {c[0]: [] for c in configs}
    for i in range(300):
        v = q[i:i + 1]
        for name, index, settings, _ in configs:
            apply(index, settings)
            t0 = time.perf_counter()
            index.search(v, 10)
            t1 = time.perf_counter()
            index._index.search(v, 10)
            t2 = time.perf_counter()
            times[name].append(t1 - t0)
            bare[name].append(t2 - t1)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t_flat = float(np.median(times["flat (exact)"]))
    for name, _, _, note in configs:
        t = float(np.median(times[name]))
        row("ann", name, 1 / t, "queries/s", f"{t_flat / t:.1f}x flat",
            f"recall@10 {recalls[name]:.3f}; {note}; bare faiss "
            f"{1 / float(np.median(bare[name])):.0f} q/s")


# ---------------------------------------------------------------------------------------------
def bench_ingest() -> None:
    """Section 3: library build throughput against the bare embedder."""
    from retrievers.build import build_from_rows
    from retrievers.demo import demo_image_rows
    from retrievers.embedders import MedSamImageEmbedder
    from retrievers.library import CaseLibrary
    from tools.ingest.loader import load_image
    from tools.models.medsam import get_predictor

    rows = demo_image_rows()
    displays = [load_image(r.image_path).display for r in rows]
    pred = get_predictor()
    pred.embed(displays[0])  # load the network outside the timings
    print(f"indexing throughput, {len(rows)} real DICOM images (LiteMedSAM)", flush=True)

    def bare() -> float:
        pred.clear()
        t0 = time.perf_counter()
        for d in displays:
            pred.embed(d)
        return len(displays) / (time.perf_counter() - t0)

    def indexed() -> float:
        pred.clear()
        with tempfile.TemporaryDirectory() as tmp:
            lib = CaseLibrary.create(Path(tmp) / "lib", MedSamImageEmbedder(), None)
            t0 = time.perf_counter()
            build_from_rows(lib, rows, batch_size=4, progress=False)
            rate = len(rows) / (time.perf_counter() - t0)
            lib.close()
        return rate

    b1 = bare()
    ix = indexed()
    b2 = bare()
    b = (b1 + b2) / 2
    row("ingest", "bare embedder (decoded images)", b, "images/s", "1.00x",
        f"passes {b1:.3f} and {b2:.3f}")
    row("ingest", "medloop index build (files -> library)", ix, "images/s",
        f"{ix / b:.0%} of bare", "goal >= 90 %")


def main() -> None:
    """Run the sections asked for and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--sections", default="flat,ann,ingest")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
          f"GPUs: {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}", flush=True)
    sections = args.sections.split(",")
    if "flat" in sections:
        bench_flat(args.n, args.dim, args.queries)
    if "ann" in sections:
        bench_ann()
    if "ingest" in sections:
        bench_ingest()
    print("\n| section | what | value | unit | ratio | note |\n|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['section']} | {r['what']} | {r['value']:.4g} | {r['unit']} | {r['ratio']} "
              f"| {r['note']} |")
    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=2))


if __name__ == "__main__":
    main()
