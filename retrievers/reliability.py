"""Measure, per kind of question, whether a library's case-based answers beat the commonest one.

``medloop library train`` calls ``train_and_save`` after the heads and the answer model: the
library's own pairs are split in ``folds`` by image; for each fold a bank, heads and an answer
model are fitted on the other folds only (as ``case_answer`` would have them), every pair of
the fold is answered the way ``case_answer`` answers it (``expert_answer``), and per kind
(``retrievers.question_kinds``) the right answers are counted beside those of the commonest
answer of that kind in the fitting folds, with the pairs only one of the two got right (the
sign test's wins and losses). Only answered pairs are compared: the question the table answers
at run time is "given that the cases have an answer, is it worth more than the prior?".
Nothing is tuned on the pairs being scored.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrievers.answer_model import fit_answer_model
from retrievers.case_answers import (
    CaseBank,
    answer_from_cases,
    is_yesno_question,
    never_withheld,
    yesno_from_library,
)
from retrievers.heads import Head, fit_head, library_labels
from retrievers.label_answers import choice_answer, describe_answer, label_answer
from retrievers.question_kinds import (
    KindScore,
    Reliability,
    kind_key,
    read_kind,
    save_reliability,
)
from retrievers.vqa_library import (
    QAItem,
    folds_by_image,
    library_image_vectors,
    load_qa,
    normalise_answer,
)
from tools.errors import ToolInputError

__all__ = ["expert_answer", "measure_reliability", "train_and_save"]


def expert_answer(bank: CaseBank, heads: dict[str, Head], model: Any, embedder: str,
                  question: str, qvec: np.ndarray, vec: np.ndarray) -> tuple[str, float, str]:
    """``case_answer``'s answer, score and method for one question, before any withholding.

    The method is ``head:<task>``, ``answer-model`` or ``cases`` (the neighbours' vote);
    ``("", 0.0, "")`` when it has none.
    """
    if is_yesno_question(question):
        yn = yesno_from_library(question, qvec, vec, embedder, heads, model)
        if yn is not None:  # "": the heads cannot tell, and nothing else is asked
            return yn.answer, max(yn.p_yes, 1.0 - yn.p_yes) if yn.answer else 0.0, yn.method
    else:
        named = (label_answer(question, vec, heads, embedder, bank.phrasings())
                 or describe_answer(question, vec, heads, embedder)
                 or choice_answer(question, vec, heads, embedder))
        if named is not None:
            return named.answer, named.score, f"head:{named.task}"
    res = answer_from_cases(bank, vec, qvec, question)
    return (res.answer, res.score, "cases") if res is not None else ("", 0.0, "")


def _heads(labels: dict[str, dict[str, str]], vectors: dict[str, np.ndarray],
           cases: Sequence[str], embedder: str) -> dict[str, Head]:
    """A head per label task on ``cases`` (classes with at least two cases), as trained."""
    out: dict[str, Head] = {}
    tasks = sorted({t for c in cases for t in labels.get(c, {})})
    for task in tasks:
        rows = [(c, labels[c][task]) for c in cases if task in labels.get(c, {})]
        counts = Counter(v for _, v in rows)
        rows = [(c, v) for c, v in rows if counts[v] >= 2]
        if len({v for _, v in rows}) < 2:
            continue
        out[task] = fit_head(np.stack([vectors[c] for c, _ in rows]), [v for _, v in rows],
                             task, embedder)
    return out


def measure_reliability(items: Sequence[QAItem], question_vectors: np.ndarray,
                        vectors: dict[str, np.ndarray], labels: dict[str, dict[str, str]],
                        image_embedder: str, text_embedder: str = "", folds: int = 5,
                        seed: int = 0) -> Reliability:
    """The per-kind table for these pairs (see the module docstring).

    ``vectors`` and ``labels`` are per case id (``items[i].image``); pairs without a vector
    or a category are left out.
    """
    keep = [i for i, it in enumerate(items)
            if it.image in vectors and kind_key(it.category, True) is not None]
    fold_of = folds_by_image([items[i].image for i in keep], folds, seed)
    # n, answered, right, commonest right, won (only the cases right), lost (only the commonest)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    majority_shown: dict[str, Counter[str]] = defaultdict(Counter)
    qv = np.asarray(question_vectors)
    for fold in range(folds):
        fit = [i for i in keep if fold_of[items[i].image] != fold]
        scored = [i for i in keep if fold_of[items[i].image] == fold]
        if not fit or not scored:
            continue
        cases = sorted({items[i].image for i in fit})
        bank = CaseBank.from_arrays(cases, np.stack([vectors[c] for c in cases]),
                                    [items[i] for i in fit], qv[fit])
        heads = _heads(labels, vectors, cases, image_embedder)
        yesno = [i for i in fit if items[i].answer_type == "yesno"
                 and normalise_answer(items[i].answer) in ("yes", "no")]
        try:
            model = fit_answer_model(qv[yesno], np.stack([vectors[items[i].image] for i in yesno]),
                                     [items[i].answer for i in yesno], text_embedder,
                                     image_embedder, image_mean=np.mean(
                                         [vectors[c] for c in cases], axis=0))
        except ToolInputError:
            model = None
        prior: dict[str, Counter[str]] = defaultdict(Counter)
        for i in fit:
            key = read_kind(items[i].category, is_yesno_question(items[i].question),
                            items[i].question)
            if key:
                prior[key][normalise_answer(items[i].answer)] += 1
        for i in scored:
            it = items[i]
            # closed as answer time reads it (the question's form, ``unreliable_kind``), not
            # as labelled: "Is the brain atrophied or shrunk?" (labelled yes/no) is answered
            # as an either-or question, so it is measured among the open ones
            closed = is_yesno_question(it.question)
            key = read_kind(it.category, closed, it.question)
            if key is None:
                continue
            answer, _, method = expert_answer(bank, heads, model, image_embedder, it.question,
                                              qv[i], vectors[it.image])
            if never_withheld(closed, method):
                continue  # answered by a head whatever its kind's verdict: not part of it
            c = counts[key]
            c[0] += 1
            if not answer:
                continue
            truth = normalise_answer(it.answer)
            top = prior[key].most_common(1)[0][0] if prior[key] else ""
            majority_shown[key][top] += 1
            right, prior_right = normalise_answer(answer) == truth, top == truth
            c[1] += 1
            c[2] += right
            c[3] += prior_right
            c[4] += right and not prior_right
            c[5] += prior_right and not right
    kinds = {k: KindScore(k, n, answered, ok, major,
                          majority_shown[k].most_common(1)[0][0] if majority_shown[k] else "",
                          won, lost)
             for k, (n, answered, ok, major, won, lost) in counts.items()}
    return Reliability(kinds, folds, seed)


def train_library(library: Any) -> None:
    """Fit everything ``case_answer`` reads beside a library's pairs.

    The trained heads, the yes/no answer model and, measured with both, the per-kind table:
    what ``medloop library train`` fits.
    """
    from retrievers import answer_model, heads

    heads.train_and_save(library)
    answer_model.train_and_save(library)
    train_and_save(library)


def train_and_save(library: Any, folds: int = 5, seed: int = 0) -> dict[str, Any] | None:
    """Measure and save the table of a library built from labelled pairs; a JSON summary.

    None when the library holds no question-answer pairs (an image-only library).
    """
    try:
        qa = load_qa(library.root)
    except FileNotFoundError:
        return None
    t0 = time.perf_counter()
    vectors = library_image_vectors(library)
    rows, by_task = library_labels(library)
    records = library.db.get(rows)
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    for task, values in by_task.items():
        for row, value in values.items():
            if row in records:
                labels[records[row].case_id][task] = value
    rel = measure_reliability(qa.items, qa.vectors, vectors, dict(labels),
                              library.image_embedder.name, str(qa.embedder.get("name", "")),
                              folds, seed)
    path = save_reliability(library.root, rel)
    return {"path": str(path), "seconds": round(time.perf_counter() - t0, 2),
            "withheld": sorted(k for k, v in rel.kinds.items() if not v.reliable),
            "answered": sorted(k for k, v in rel.kinds.items() if v.reliable)}
