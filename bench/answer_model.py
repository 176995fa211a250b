"""Which features the yes/no answer model should read, measured on real images by image folds.

``retrievers.answer_model`` answers the yes/no questions no neighbour was asked: a logistic
regression on the question's MiniLM vector joined to the image's centred LiteMedSAM vector.
This script compares it, on the dev set's yes/no items, 5 folds by image (the fold libraries
``medloop eval --library-folds`` builds: each item scored by a model fitted on the other four
folds' images), with what else a model could read offline:

- the majority answer of the question's category in the fitting folds (the baseline);
- the question alone, the image alone (the same model with one half of its features);
- the question's words as well (TF-IDF of unigrams and bigrams, fitted on the fitting folds);
- question x image interactions (the outer product of the first 8 principal components of each:
  "is there X" answered differently on different images, which a sum of features cannot say);
- other L2 strengths ``C``.

Reported per row: accuracy with its Wilson 95 % interval, PRES and ABN accuracy, and the
accuracy on the 10 / 20 / 30 % of items it is surest of (how far selective answering could go).

Run: ``nice .venv/bin/python bench/answer_model.py [--items PATH]`` (fold libraries as
``bench/real_answers.py`` builds them; seconds once they exist).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.context import AgentContext
from agent.evaluation.libraries import every_image_vectors, fold_libraries
from agent.evaluation.metrics import wilson_ci
from agent.evaluation.readers import load_suite
from retrievers.answer_model import C as SHIPPED_C
from retrievers.answer_model import fit_answer_model
from retrievers.embedders import l2_normalise, shared_minilm
from retrievers.heads import fit_head
from retrievers.vqa_library import normalise_answer

DEFAULT_ITEMS = Path(__file__).resolve().parents[2] / "shared/data/vqa_rad_dev/items.jsonl"
COVERAGES = (0.1, 0.2, 0.3)

# (fit rows, scored rows) -> P(yes) of the scored rows
Variant = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load(items_file: Path) -> dict[str, np.ndarray]:
    """The yes/no items' question vectors, image vectors, answers, categories and folds."""
    items = load_suite(str(items_file))
    home = AgentContext.from_env().home_dir / "eval-libraries"
    library_of = fold_libraries(items_file, items, 5, 0, home,
                                progress=lambda m: print(f"# {m}", file=sys.stderr))
    vectors = every_image_vectors(library_of)
    fold_names = sorted(set(library_of.values()))
    keep = [it for it in items
            if it.answer_type == "yesno" and normalise_answer(it.answer) in ("yes", "no")]
    base = items_file.parent.resolve()
    images = [Path(str(it.images[0])).resolve().relative_to(base).as_posix() for it in keep]
    return {"q": shared_minilm().embed_texts([it.prompt for it in keep]),
            "img": np.stack([vectors[im] for im in images]),
            "y": np.array([normalise_answer(it.answer) == "yes" for it in keep]),
            "text": np.array([it.prompt for it in keep]),
            "cat": np.array([str(it.meta.get("category", "")) for it in keep]),
            "fold": np.array([fold_names.index(library_of[it.id]) for it in keep])}


def cross_validate(d: dict[str, np.ndarray], variant: Variant) -> np.ndarray:
    """Out-of-fold P(yes) for every item (each fold scored by a fit on the others)."""
    p = np.zeros(len(d["y"]))
    for k in np.unique(d["fold"]):
        fit, scored = d["fold"] != k, d["fold"] == k
        p[scored] = variant(fit, scored)
    return p


def majority(d: dict[str, np.ndarray]) -> Variant:
    """The share of "yes" among the fitting items of the scored item's category."""
    def run(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
        out = []
        for i in np.where(scored)[0]:
            same = fit & (d["cat"] == d["cat"][i])
            out.append(d["y"][same].mean() if same.any() else d["y"][fit].mean())
        return np.array(out)
    return run


def shipped(d: dict[str, np.ndarray]) -> Variant:
    """``retrievers.answer_model.fit_answer_model`` as the library trains it."""
    def run(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
        m = fit_answer_model(d["q"][fit], d["img"][fit],
                             ["yes" if v else "no" for v in d["y"][fit]])
        return np.array([m.p_yes(d["q"][i], d["img"][i]) for i in np.where(scored)[0]])
    return run


def linear(d: dict[str, np.ndarray], c: float, question: bool = True, image: bool = True,
           words: bool = False, interactions: int = 0) -> Variant:
    """A calibrated logistic regression (``fit_head``) on the chosen features."""
    def run(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA
        from sklearn.feature_extraction.text import TfidfVectorizer

        centred = l2_normalise(d["img"] - d["img"][fit].mean(axis=0))
        parts = ([d["q"]] if question else []) + ([centred] if image else [])
        if words:
            tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            parts.append(tfidf.fit(d["text"][fit]).transform(d["text"]).toarray())
        if interactions:
            a = PCA(interactions).fit(d["q"][fit]).transform(d["q"])
            b = PCA(interactions).fit(centred[fit]).transform(centred)
            parts.append((a[:, :, None] * b[:, None, :]).reshape(len(a), -1))
        x = np.hstack(parts)
        head = fit_head(x[fit], ["yes" if v else "no" for v in d["y"][fit]], c=c,
                        standardise=False)
        return head.predict_proba(x[scored])[:, head.classes.index("yes")]
    return run


def canonical(d: dict[str, np.ndarray], c: float) -> Variant:
    """The shipped model, its target read in one polarity .

    "Is the liver normal?" and "Is the liver abnormal?" ask one thing with opposite yeses;
    MiniLM puts them side by side, so a model fitted on both learns a blur. Here a question
    asking whether something is normal has its answer flipped before fitting and its
    prediction flipped back: every such question is fitted as "is it abnormal?".
    """
    import re
    normal = re.compile(r"\bnormal\b|unremarkable|unaltered|healthy", re.IGNORECASE)
    flip = np.array([bool(normal.search(t)) for t in d["text"]])
    print(f"# {flip.sum()} questions ask whether something is normal", file=sys.stderr)

    def run(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
        y = d["y"] ^ flip
        m = fit_answer_model(d["q"][fit], d["img"][fit], ["yes" if v else "no" for v in y[fit]])
        p = np.array([m.p_yes(d["q"][i], d["img"][i]) for i in np.where(scored)[0]])
        return np.where(flip[scored], 1.0 - p, p)
    return run


def row(name: str, d: dict[str, np.ndarray], p: np.ndarray) -> str:
    """One table row: accuracy (CI), PRES, ABN and the surest 10 / 20 / 30 %."""
    right = (p > 0.5) == d["y"]
    lo, hi = wilson_ci(int(right.sum()), len(right))
    order = np.argsort(-np.maximum(p, 1 - p), kind="stable")
    surest = [right[order[: int(c * len(right))]].mean() for c in COVERAGES]
    cats = [right[d["cat"] == c].mean() for c in ("PRES", "ABN")]
    return (f"| {name} | **{right.mean():.1%}** ({lo:.1%}–{hi:.1%}) | "
            + " | ".join(f"{v:.1%}" for v in cats + surest) + " |")


def main() -> int:
    """Print the comparison table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=Path, default=DEFAULT_ITEMS)
    args = ap.parse_args()
    d = load(args.items)
    n = Counter(d["cat"].tolist())
    print(f"{len(d['y'])} yes/no items ({n['PRES']} PRES, {n['ABN']} ABN), 5 folds by image\n")
    print("| model | accuracy (95 % CI) | PRES | ABN | surest 10 % | surest 20 % | surest 30 % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, Variant]] = [
        ("majority of the category", majority(d)),
        (f"shipped: question + image, C={SHIPPED_C}", shipped(d)),
        ("question + image, one polarity (normal questions flipped)", canonical(d, SHIPPED_C)),
        ("question only", linear(d, SHIPPED_C, image=False)),
        ("image only", linear(d, SHIPPED_C, question=False)),
        ("question + image + words (TF-IDF)", linear(d, SHIPPED_C, words=True)),
        ("question + image + question x image (8 x 8)", linear(d, SHIPPED_C, interactions=8)),
    ] + [(f"question + image, C={c}", linear(d, c)) for c in (0.1, 1.0, 3.0)]
    for name, variant in rows:
        print(row(name, d, cross_validate(d, variant)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
