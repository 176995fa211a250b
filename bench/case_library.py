"""Case library benchmark on real images: which image embedding, and how well cases answer.

Everything is cross-validated BY IMAGE on the VQA-RAD dev set (``--items``, default
``../shared/data/vqa_rad_dev/items.jsonl``): images are split into ``--folds`` folds (seeded);
each fold is scored with a library / fit made of the other folds only, and every figure sits
beside the majority baseline computed from those same fitting folds.

1. Embedder table: for each encoder and pooling (LiteMedSAM mean / max / GeM / mean+std /
   2x2 grid, EfficientNet-Lite0 likewise, grey thumbnails, intensity histograms), raw and
   centred (the fitting folds' mean vector subtracted), the accuracy of the 5 nearest images'
   weighted vote on each image's organ / modality / plane label (``retrievers.vqa_library.
   image_labels``), of a logistic-regression head (``retrievers.heads``), and the mean cosine
   of an image to its nearest neighbour vs to a random other image (how much of the score is
   a shared component).
2. Case answers: ``retrievers.case_answers`` with the chosen embedder, per question category
   and per closed (yes/no) / open, against the per-category majority answer; open answers by
   normalised exact match and by token recall.

Run: ``nice .venv/bin/python bench/case_library.py`` (features are cached in
``$MEDLOOP_HOME/bench/case_library/``; the first run embeds the 111 images with every encoder,
a few minutes on two cores). ``--json`` writes the tables too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrievers.case_answers import CaseBank, answer_from_cases, token_recall
from retrievers.embedders import (
    POOLINGS,
    EfficientNetLiteEmbedder,
    HistogramEmbedder,
    MedSamPooledEmbedder,
    ThumbnailEmbedder,
    l2_normalise,
    pool_feature_map,
    shared_minilm,
)
from retrievers.heads import fit_head
from retrievers.vqa_library import (
    QAItem,
    folds_by_image,
    image_labels,
    load_display,
    normalise_answer,
    read_items,
)

TASKS = ("organ", "modality", "plane")
DEFAULT_ITEMS = Path(__file__).resolve().parents[2] / "shared/data/vqa_rad_dev/items.jsonl"


def image_folds(images: list[str], folds: int, seed: int = 0) -> list[int]:
    """A fold number per image, in ``images`` order (``folds_by_image``: split BY IMAGE)."""
    by_image = folds_by_image(images, folds, seed)
    return [by_image[im] for im in images]


def compute_features(images: list[str], root: Path, cache: Path) -> dict[str, np.ndarray]:
    """Every embedder's ``(n_images, dim)`` unit vectors, cached per encoder in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    displays: list[np.ndarray] | None = None
    feats: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    for encoder in ("litemedsam", "efficientnet-lite0", "baselines"):
        path = cache / f"{encoder}.npz"
        if path.exists():
            with np.load(path) as z:
                if list(z["images"]) == images:
                    feats.update({k: z[k] for k in z.files if k not in ("images", "seconds")})
                    timings[encoder] = float(z["seconds"])
                    continue
        if displays is None:
            displays = [load_display(root / im) for im in images]
        t0 = time.perf_counter()
        out = _encode(encoder, displays)
        seconds = (time.perf_counter() - t0) / len(images)
        arrays: dict[str, Any] = {"images": np.array(images), "seconds": np.float64(seconds), **out}
        np.savez(path, **arrays)
        feats.update(out)
        timings[encoder] = seconds
    print("seconds per image: " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()),
          flush=True)
    return feats


def _encode(encoder: str, displays: list[np.ndarray]) -> dict[str, np.ndarray]:
    if encoder == "litemedsam":
        ms = MedSamPooledEmbedder("mean")
        maps = [ms.feature_map(d) for d in displays]
        return {f"litemedsam-{p}": l2_normalise(np.stack([pool_feature_map(m, p) for m in maps]))
                for p in POOLINGS}
    if encoder == "efficientnet-lite0":
        eff = EfficientNetLiteEmbedder("mean")
        fmaps = eff.feature_maps(displays)
        return {f"efficientnet-lite0-{p}": l2_normalise(
            np.stack([pool_feature_map(m, p) for m in fmaps])) for p in POOLINGS}
    return {"thumbnail-16": ThumbnailEmbedder(16).embed_images(displays),
            "thumbnail-32": ThumbnailEmbedder(32).embed_images(displays),
            "histogram-32": HistogramEmbedder(32).embed_images(displays)}


def centre(fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Subtract the fitting rows' mean from every set, then renormalise."""
    mu = fit.mean(axis=0, keepdims=True)
    return [l2_normalise(x - mu) for x in (fit, *others)]


def knn_vote(sims: np.ndarray, labels: list[str], k: int = 5) -> str:
    """The label with the largest sum of (non-negative) similarity among the ``k`` nearest."""
    top = np.argsort(-sims)[:k]
    votes: dict[str, float] = defaultdict(float)
    for i in top:
        votes[labels[i]] += max(float(sims[i]), 1e-6)
    return max(votes, key=lambda lab: votes[lab])


def embedder_row(x: np.ndarray, labels: list[dict[str, str]], fold: list[int], folds: int,
                 centred: bool) -> dict[str, Any]:
    """kNN / head / baseline accuracy per task and the cosine spread, for one embedding."""
    row: dict[str, Any] = {}
    nn_cos, rand_cos = [], []
    rng = np.random.default_rng(1)
    for task in TASKS:
        right = {"knn": 0, "head": 0, "majority": 0}
        n = 0
        for f in range(folds):
            fit = [i for i in range(len(x)) if fold[i] != f and task in labels[i]]
            test = [i for i in range(len(x)) if fold[i] == f and task in labels[i]]
            if not test or len({labels[i][task] for i in fit}) < 2:
                continue
            xf, xt = (centre(x[fit], x[test]) if centred else (x[fit], x[test]))
            yf = [labels[i][task] for i in fit]
            majority = Counter(yf).most_common(1)[0][0]
            head = fit_head(xf, yf)
            probs = head.predict_proba(xt)
            sims = xt @ xf.T
            for j, i in enumerate(test):
                truth = labels[i][task]
                right["knn"] += knn_vote(sims[j], yf) == truth
                right["head"] += head.classes[int(np.argmax(probs[j]))] == truth
                right["majority"] += majority == truth
                n += 1
                if task == "organ":
                    nn_cos.append(float(sims[j].max()))
                    rand_cos.append(float(sims[j][rng.integers(len(fit))]))
        row[task] = {k: v / n for k, v in right.items()} | {"n": n}
    row["cos_nearest"] = float(np.mean(nn_cos))
    row["cos_random"] = float(np.mean(rand_cos))
    return row


def embedder_table(feats: dict[str, np.ndarray], labels: list[dict[str, str]],
                   fold: list[int], folds: int) -> list[dict[str, Any]]:
    """One row per embedding x {raw, centred}, best mean kNN accuracy first."""
    rows = []
    for name, x in feats.items():
        for centred in (False, True):
            r = embedder_row(x, labels, fold, folds, centred)
            r["embedder"] = name + (" +centred" if centred else "")
            r["mean_knn"] = float(np.mean([r[t]["knn"] for t in TASKS]))
            rows.append(r)
    return sorted(rows, key=lambda r: -r["mean_knn"])


def print_embedder_table(rows: list[dict[str, Any]]) -> None:
    """The table in the report's layout."""
    n = {t: rows[0][t]["n"] for t in TASKS}
    print(f"\n| embedding | organ kNN / head (n={n['organ']}) | modality kNN / head "
          f"(n={n['modality']}) | plane kNN / head (n={n['plane']}) | mean kNN | "
          "cos nearest / random |")
    print("|---|---|---|---|---|---|")
    base = rows[0]
    print("| majority (fitting folds) | " + " | ".join(
        f"{base[t]['majority']:.2f}" for t in TASKS) + " | | |")
    for r in rows:
        print(f"| {r['embedder']} | " + " | ".join(
            f"{r[t]['knn']:.2f} / {r[t]['head']:.2f}" for t in TASKS)
            + f" | {r['mean_knn']:.3f} | {r['cos_nearest']:.2f} / {r['cos_random']:.2f} |")


def _category(it: QAItem) -> str:
    return (it.category or "OTHER").split(",")[0].strip().upper().replace("ATRIB", "ATTRIB")


def case_answer_eval(items: list[QAItem], images: list[str], x: np.ndarray, qvec: np.ndarray,
                     fold: list[int], folds: int, centred: bool) -> dict[str, Any]:
    """Cross-validated case answers per category and per closed/open vs the majority answer."""
    img_fold = dict(zip(images, fold, strict=True))
    img_row = {im: i for i, im in enumerate(images)}
    stats: dict[str, dict[str, float]] = {}
    t_answer = []
    for f in range(folds):
        fit_imgs = [im for im in images if img_fold[im] != f]
        fit_items = [i for i, it in enumerate(items) if img_fold[it.image] != f]
        bank = CaseBank.from_arrays(fit_imgs, x[[img_row[im] for im in fit_imgs]],
                                    [items[i] for i in fit_items], qvec[fit_items],
                                    centred=centred)
        majority = _majorities([items[i] for i in fit_items])
        for i, it in enumerate(items):
            if img_fold[it.image] != f:
                continue
            t0 = time.perf_counter()
            res = answer_from_cases(bank, x[img_row[it.image]], qvec[i], it.question)
            t_answer.append(time.perf_counter() - t0)
            cat = _category(it)
            base = majority.get((cat, it.answer_type)) or majority.get(("*", it.answer_type), "")
            said = res.answer if res is not None else base
            for key in (cat, it.answer_type, "ALL"):
                c = stats.setdefault(key, defaultdict(float))
                c["n"] += 1
                c["covered"] += res is not None
                if res is not None:  # selective: only where the neighbours answered
                    c["covered_right"] += normalise_answer(said) == normalise_answer(it.answer)
                    c["covered_majority"] += normalise_answer(base) == normalise_answer(it.answer)
                c["right"] += normalise_answer(said) == normalise_answer(it.answer)
                c["recall"] += token_recall(said, it.answer)
                c["majority"] += normalise_answer(base) == normalise_answer(it.answer)
                c["majority_recall"] += token_recall(base, it.answer)
    return {"per": {k: dict(v) for k, v in stats.items()},
            "ms_per_answer": 1000 * float(np.median(t_answer))}


def _majorities(items: list[QAItem]) -> dict[tuple[str, str], str]:
    """The most frequent normalised answer per (category, answer type), and per type ('*')."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for it in items:
        for key in ((_category(it), it.answer_type), ("*", it.answer_type)):
            counts.setdefault(key, Counter())[normalise_answer(it.answer)] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def print_answer_table(res: dict[str, Any], n_items: int, folds: int) -> None:
    """Per category (and closed/open, all): accuracy vs the majority answer."""
    print(f"\ncase answers, {n_items} items, {folds} folds by image; abstentions fall back to the "
          f"majority answer; median {res['ms_per_answer']:.2f} ms per answer")
    print("| category | n | covered | case answers: exact / token recall | "
          "majority: exact / token recall | where covered: case / majority |")
    print("|---|---|---|---|---|---|")
    per = res["per"]
    order = [*sorted((k for k in per if k not in ("yesno", "open", "ALL")), key=lambda k: -per[k]["n"]), "yesno", "open", "ALL"]
    for k in order:
        c = per[k]
        n, cov = int(c["n"]), max(1.0, c["covered"])
        print(f"| {k} | {n} | {c['covered'] / n:.2f} | {c['right'] / n:.3f} / "
              f"{c['recall'] / n:.3f} | {c['majority'] / n:.3f} / {c['majority_recall'] / n:.3f} | "
              f"{c.get('covered_right', 0) / cov:.3f} / {c.get('covered_majority', 0) / cov:.3f} |")


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print their tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=Path, default=DEFAULT_ITEMS)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--embedder", default=None,
                    help="only part 2, with this embedding, e.g. 'litemedsam-max +centred' "
                         "(default: part 1, then part 2 with its best)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    home = Path(os.environ.get("MEDLOOP_HOME", Path.home() / ".medloop"))
    items = read_items(args.items)
    images = sorted({it.image for it in items})
    per_image = image_labels(items)
    labels = [per_image.get(im, {}) for im in images]
    fold = image_folds(images, args.folds)
    print(f"{len(items)} items on {len(images)} images, {args.folds} folds by image; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    feats = compute_features(images, args.items.parent, home / "bench" / "case_library")
    rows: list[dict[str, Any]] = []
    if args.embedder is None:
        t0 = time.perf_counter()
        rows = embedder_table(feats, labels, fold, args.folds)
        print_embedder_table(rows)
        print(f"(table in {time.perf_counter() - t0:.1f} s)")
    chosen = args.embedder or rows[0]["embedder"]
    name, centred = chosen.removesuffix(" +centred"), chosen.endswith(" +centred")
    t1 = time.perf_counter()
    qvec = shared_minilm().embed_texts([it.question for it in items])
    print(f"\nquestions embedded with MiniLM in {time.perf_counter() - t1:.1f} s; "
          f"case answers with {chosen}")
    res = case_answer_eval(items, images, feats[name], qvec, fold, args.folds, centred)
    print_answer_table(res, len(items), args.folds)
    if args.json:
        args.json.write_text(json.dumps({"embedders": rows, "chosen": chosen,
                                         "case_answers": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
