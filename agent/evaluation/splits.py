"""Accuracy by split — closed/open, question category, organ — with every variant side by side.

One overall accuracy hides where an agent is right: on VQA-RAD the majority answer already
scores about 53 % on yes/no questions and almost nothing on open ones, and a category such as
position (POS) may be answerable by no offline tool at all. ``split_table`` gives, for each
split value, each variant's accuracy with its Wilson 95 % interval, its abstention rate and,
for open questions, the normalised exact match and token recall — so the agent's figure sits
next to the majority, blank-image, shuffled-image and question-only baselines on the same
items.

``open_figures`` and ``conflict_counts`` are the per-variant figures the report adds to the
overall metrics.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from agent.evaluation.metrics import paired_sign_test, wilson_ci
from agent.evaluation.runner import Record
from agent.evaluation.scoring import open_scores

__all__ = ["CLOSED_TYPES", "SPLITS", "answered_table", "conflict_counts", "open_figures",
           "split_table", "split_value"]

SPLITS = ("closed_open", "category", "organ")
# Closed questions: a fixed set of answers (yes/no, or the listed options).
CLOSED_TYPES = frozenset({"yesno", "choice"})


def split_value(record: Record, split: str) -> str:
    """The record's value for ``split`` (``""`` when the item does not say)."""
    if split == "closed_open":
        return "closed" if record.answer_type in CLOSED_TYPES else "open"
    return str(record.meta.get(split) or "")


def _open(record: Record) -> tuple[bool, float] | None:
    """Exact match and token recall of an open answer (recomputed for older records)."""
    if record.answer_type != "open":
        return None
    if record.exact_match is not None and record.token_recall is not None:
        return record.exact_match, record.token_recall
    s = open_scores(record.answer, record.reference)
    return s.exact, s.token_recall


def _r(x: float, nd: int = 4) -> float | None:
    return None if np.isnan(x) else round(float(x), nd)


def open_figures(recs: Sequence[Record]) -> dict[str, Any]:
    """Closed and open accuracy, and the two open-answer scores (None where no such item)."""
    closed = [r for r in recs if r.answer_type in CLOSED_TYPES]
    opened = [r for r in recs if r.answer_type not in CLOSED_TYPES]
    free = [s for s in (_open(r) for r in recs) if s is not None]
    return {
        "n_closed": len(closed),
        "closed_accuracy": _r(float(np.mean([r.correct for r in closed]))) if closed else None,
        "n_open": len(opened),
        "open_accuracy": _r(float(np.mean([r.correct for r in opened]))) if opened else None,
        "open_exact_match": _r(float(np.mean([e for e, _ in free]))) if free else None,
        "open_token_recall": _r(float(np.mean([t for _, t in free]))) if free else None,
    }


def conflict_counts(recs: Sequence[Record]) -> dict[str, int]:
    """Answers that contradict their own cited evidence: those given (target 0) and all.

    An abstained answer that still states a contradiction is counted in the second figure
    only: it was withheld from the user as an answer.
    """
    return {
        "answers_contradicting_evidence": sum(1 for r in recs if r.conflicts and not r.abstained),
        "answers_contradicting_evidence_all": sum(1 for r in recs if r.conflicts),
    }


def _cell(recs: Sequence[Record]) -> dict[str, Any]:
    n = len(recs)
    k = sum(r.correct for r in recs)
    lo, hi = wilson_ci(k, n)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": _r(k / n),
        "accuracy_ci95": [_r(lo), _r(hi)],
        "abstention_rate": _r(float(np.mean([r.abstained for r in recs]))),
    }
    free = [s for s in (_open(r) for r in recs) if s is not None]
    if free:
        out["exact_match"] = _r(float(np.mean([e for e, _ in free])))
        out["token_recall"] = _r(float(np.mean([t for _, t in free])))
    return out


def split_table(records: Sequence[Record]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{split: {value: {variant: figures}}}`` for the splits the records carry.

    Records that errored count as wrong (as in the overall figures). A split none of the
    records has a value for (phantoms have no organ) is left out.
    """
    variants = list(dict.fromkeys(r.variant for r in records))
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for split in SPLITS:
        values = sorted({split_value(r, split) for r in records} - {""})
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for value in values:
            row = {v: [r for r in records if r.variant == v and split_value(r, split) == value]
                   for v in variants}
            table[value] = {v: _cell(recs) for v, recs in row.items() if recs}
        if table:
            out[split] = table
    return out


def answered_table(records: Sequence[Record], variant: str = "full",
                   baseline: str = "majority",
                   passed: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per category, whether ``variant`` is right more often than ``baseline`` where it answered.

    ``{category: {n, answered, accuracy, baseline_accuracy, verdict, won, lost, p_value}}``:
    ``accuracy`` and ``baseline_accuracy`` are over the same answered items (first repeat),
    ``verdict`` is ``above``, ``level`` (as often right), ``below`` or ``abstains`` (nothing
    answered). This is the measure of "every category above its majority baseline or
    abstaining": an agent that abstains where it cannot see the answer should read
    ``abstains`` there, not ``below``. ``won`` and ``lost`` count the answered items where only
    the agent, or only the baseline, is right, and ``p_value`` is McNemar's exact two-sided
    test on them: the verdict goes by the counts, the p-value says whether they differ beyond
    chance (on a few dozen items they seldom do).

    ``passed`` is the ids of the items whose calibrated confidence clears the abstention
    threshold. Given, only those count as answered: what a calibrated agent states without
    "Uncertain" (an evaluation with ``--raw`` withholds only what no tool could answer). Empty
    without baseline records or categories.
    """
    base = {r.item_id: r for r in records if r.variant == baseline and r.repeat == 0}
    mine = [r for r in records if r.variant == variant and r.repeat == 0 and r.item_id in base]
    out: dict[str, dict[str, Any]] = {}
    for value in sorted({split_value(r, "category") for r in mine} - {""}):
        rows = [r for r in mine if split_value(r, "category") == value]
        answered = [r for r in rows if not r.abstained and r.answer.strip()
                    and (passed is None or r.item_id in passed)]
        right = sum(r.correct for r in answered)
        prior = sum(base[r.item_id].correct for r in answered)
        won = sum(1 for r in answered if r.correct and not base[r.item_id].correct)
        lost = sum(1 for r in answered if base[r.item_id].correct and not r.correct)
        out[value] = {
            "n": len(rows), "answered": len(answered),
            "accuracy": _r(right / len(answered)) if answered else None,
            "baseline_accuracy": _r(prior / len(answered)) if answered else None,
            "verdict": ("abstains" if not answered else "above" if right > prior
                        else "level" if right == prior else "below"),
            "won": won, "lost": lost, "p_value": _r(paired_sign_test(won, lost)),
        }
    return out
