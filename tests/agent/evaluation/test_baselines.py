"""The majority baseline: answered per category from the fitting folds only (folds by image)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agent.evaluation import load_suite
from agent.evaluation.baselines import Majority, majority_records
from agent.evaluation.folds import folds_by_image
from agent.evaluation.items import EvalItem
from agent.evaluation.scoring import answer_tokens

MINI = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"


def _item(i: int, image: str, answer: str, category: str, kind: str = "open") -> EvalItem:
    return EvalItem(id=f"q{i}", question="?", answer=answer, answer_type=kind,  # type: ignore[arg-type]
                    images=[image], meta={"category": category})


def test_the_scored_image_never_votes_for_its_own_answer():
    # Image a.png has three modality questions answered "CT"; the other images say "MRI".
    # Learnt with a.png's items included, "CT" would win for them; from the other folds only,
    # the majority is "MRI", and all three are wrong: no leakage.
    items = [_item(0, "a.png", "CT", "MODALITY"), _item(1, "a.png", "CT", "MODALITY"),
             _item(2, "a.png", "CT", "MODALITY"), _item(3, "b.png", "MRI", "MODALITY"),
             _item(4, "c.png", "MRI", "MODALITY"), _item(5, "d.png", "MRI", "MODALITY")]
    recs = {r.item_id: r for r in majority_records(items, k=4, seed=0)}
    assert [recs[f"q{i}"].answer for i in range(3)] == ["MRI"] * 3
    assert not any(recs[f"q{i}"].correct for i in range(3))
    assert recs["q0"].confidence == 1.0 and recs["q0"].meta["majority_of"] == "category"
    assert all(r.variant == "majority" and r.tool_calls == 0 for r in recs.values())


def test_majority_per_category_and_answer_type_with_fallbacks():
    fit = [_item(0, "a", "yes", "PRES", "yesno"), _item(1, "b", "yes", "PRES", "yesno"),
           _item(2, "c", "no", "PRES", "yesno"), _item(3, "d", "no", "SIZE", "yesno"),
           _item(4, "e", "X-ray", "MODALITY"), _item(5, "f", "xray", "MODALITY"),
           _item(6, "g", "CT", "MODALITY")]
    m = Majority(fit)
    assert m.answer(_item(9, "z", "?", "PRES", "yesno")) == ("yes", 2 / 3, "category")
    assert m.answer(_item(9, "z", "?", "SIZE", "yesno")) == ("no", 1.0, "category")
    # "X-ray" and "xray" are one answer; the first spelling met is given back
    assert m.answer(_item(9, "z", "?", "MODALITY")) == ("X-ray", 2 / 3, "category")
    # an unseen category falls back to the answer type's majority (a tie: alphabetical)
    assert m.answer(_item(9, "z", "?", "COLOR", "yesno")) == ("no", 0.5, "answer_type")
    # no count item at all: the overall majority (yes, no and xray tie at 2 of 7)
    assert m.answer(_item(9, "z", "?", "COLOR", "count")) == ("no", 2 / 7, "all")
    assert Majority([]).answer(fit[0]) is None


def test_on_real_items_each_answer_is_the_majority_of_its_fitting_folds():
    items = load_suite(str(MINI))
    recs = majority_records(items, k=3, seed=0)
    assert len(recs) == len(items) and not any(r.error for r in recs)
    folds = folds_by_image(items, 3, seed=0)
    for fold in folds:
        for i in fold.scored:
            it, rec = items[i], recs[i]
            assert rec.meta["fold"] == fold.index
            same = [items[j] for j in fold.fit if items[j].meta["category"] ==
                    it.meta["category"] and items[j].answer_type == it.answer_type]
            if not same:
                assert rec.meta["majority_of"] != "category"
                continue
            counts = Counter(" ".join(answer_tokens(x.answer)) for x in same)
            top = max(counts.values())
            assert counts[" ".join(answer_tokens(rec.answer))] == top
            assert rec.confidence == top / len(same)
    # graded like any answer: yes/no by the word, open by match, with exact match and recall
    closed = [r for r in recs if r.answer_type == "yesno"]
    assert all(r.parsed in ("yes", "no") for r in closed)
    assert all(r.exact_match is not None and r.token_recall is not None
               for r in recs if r.answer_type == "open")
    assert {r.domain for r in recs} == {"clinical"}


def test_a_single_image_cannot_be_cross_validated():
    items = [_item(0, "a.png", "CT", "MODALITY"), _item(1, "a.png", "CT", "MODALITY")]
    recs = majority_records(items, k=5)
    assert all(not r.correct and r.error for r in recs)
