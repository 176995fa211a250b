"""The majority-answer baseline, cross-validated by image: what knowing the labels alone scores.

A question's category and form already say a lot: most VQA-RAD "is there ...?" questions about
presence are answered "no" or "yes" in a fixed proportion, and most modality questions "CT". The
majority baseline answers every item with the commonest answer of its (category, answer type)
among the *fitting* folds' items (``folds_by_image``: no image of the scored fold is among
them), so it never sees the scored item's own answer, nor a reworded twin of it. Its confidence
is the share of those items that gave that answer. Without a category the commonest answer of
the answer type is used, and without that the commonest overall.

It runs no agent and takes milliseconds, so it is reported on every item of a suite, beside the
image baselines the runner makes (blank, shuffled, question only). Its records have the variant
``majority``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agent.evaluation.folds import folds_by_image, image_keys
from agent.evaluation.items import EvalItem
from agent.evaluation.runner import Record
from agent.evaluation.scoring import answer_tokens, grade, open_scores
from agent.trust.calibration import domain_of

__all__ = ["MAJORITY", "Majority", "majority_records"]

MAJORITY = "majority"


class Majority:
    """The commonest answers of a set of fitting items, by (category, answer type).

    Answers are counted in their normalised form (``answer_tokens``: "X-ray" and "xray" are one
    answer); the form given back is the first spelling met. Ties go to the alphabetically first
    normalised answer, so the result does not depend on item order.
    """

    def __init__(self, items: Sequence[EvalItem]) -> None:
        self._counts: dict[tuple[str, str], Counter[str]] = {}
        self._spelling: dict[str, str] = {}
        for it in items:
            norm = " ".join(answer_tokens(it.answer)) or it.answer.strip().lower()
            self._spelling.setdefault(norm, it.answer.strip())
            for key in {(_category(it), it.answer_type), ("", it.answer_type), ("", "")}:
                self._counts.setdefault(key, Counter())[norm] += 1

    def answer(self, item: EvalItem) -> tuple[str, float, str] | None:
        """``(answer, share of the fitting items that gave it, what it was the majority of)``.

        ``what`` is ``category``, ``answer_type`` or ``all``: the most specific group with any
        fitting item. None when there are no fitting items at all.
        """
        cat = _category(item)
        keys: list[tuple[tuple[str, str], str]] = (
            [((cat, item.answer_type), "category")] if cat else [])
        keys += [(("", item.answer_type), "answer_type"), (("", ""), "all")]
        for key, what in keys:
            counts = self._counts.get(key)
            if counts:
                norm, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                return self._spelling[norm], n / sum(counts.values()), what
        return None


def _category(item: EvalItem) -> str:
    return str(item.meta.get("category") or "")


def majority_records(items: Sequence[EvalItem], k: int = 5, seed: int = 0) -> list[Record]:
    """One ``majority`` record per item, each answered from the other folds (by image).

    With a single image group (nothing to fit on without the scored image) the items are
    answered from no data: they are recorded wrong with confidence 0 and an error saying so.
    """
    out: list[Record | None] = [None] * len(items)
    folds = folds_by_image(items, k, seed) if len(items) > 1 else []
    for fold in folds:
        model = Majority([items[i] for i in fold.fit])
        for i in fold.scored:
            out[i] = _record(items[i], model.answer(items[i]), fold.index)
    return [r if r is not None else _record(it, None, -1) for it, r in zip(items, out,
                                                                           strict=True)]


def _record(item: EvalItem, guess: tuple[str, float, str] | None, fold: int) -> Record:
    text, share, what = guess if guess is not None else ("", 0.0, "")
    g = grade(text, item.answer, item.answer_type, options=item.options,
              tolerance=item.tolerance)
    scores = open_scores(text, item.answer) if item.answer_type == "open" else None
    return Record(
        item_id=item.id, variant=MAJORITY, repeat=0, question=item.prompt,
        reference=item.answer, answer_type=item.answer_type, answer=text, parsed=g.parsed,
        correct=bool(text) and g.correct, confidence=share, raw_confidence=share,
        abstained=False, latency_s=0.0, tool_calls=0,
        error=None if guess is not None else "no fitting items outside this item's image",
        meta={**item.meta, "majority_of": what, "fold": fold},
        exact_match=scores.exact if scores else None,
        token_recall=scores.token_recall if scores else None,
        item_images=image_keys(item), domain=domain_of(item.images),
    )
