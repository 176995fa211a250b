"""Accuracy by closed/open, category and organ, the agent beside every baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.evaluation import load_suite
from agent.evaluation.baselines import majority_records
from agent.evaluation.runner import Record
from agent.evaluation.splits import conflict_counts, open_figures, split_table

MINI = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"


def _full(rec: Record, correct: bool, **kw) -> Record:
    """The agent's record for the same item as a majority record."""
    fields = {**rec.as_dict(), "variant": "full", "correct": correct, "answer": "x", **kw}
    return Record(**fields)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    items = load_suite(str(MINI))
    majority = majority_records(items, k=3, seed=0)
    # A made-up agent: right on every closed question, wrong on every open one.
    full = [_full(r, r.answer_type == "yesno", exact_match=False, token_recall=0.5)
            for r in majority]
    return [*full, *majority]


def test_split_table_by_closed_open_category_and_organ(records):
    table = split_table(records)
    assert set(table) == {"closed_open", "category", "organ"}
    assert set(table["organ"]) == {"HEAD", "CHEST", "ABD"}
    assert {"PRES", "MODALITY", "PLANE", "POS"} <= set(table["category"])
    closed = table["closed_open"]["closed"]
    assert closed["full"]["accuracy"] == 1.0 and closed["full"]["n"] == closed["majority"]["n"]
    lo, hi = closed["majority"]["accuracy_ci95"]
    assert lo <= closed["majority"]["accuracy"] <= hi
    opened = table["closed_open"]["open"]
    assert opened["full"]["accuracy"] == 0.0
    assert opened["full"]["exact_match"] == 0.0 and opened["full"]["token_recall"] == 0.5
    assert "exact_match" in opened["majority"] and "exact_match" not in closed["majority"]
    # every split counts each item once per variant
    for split in table.values():
        assert sum(row["majority"]["n"] for row in split.values()) == 108


def test_category_figures_match_a_count_by_hand(records):
    pres = [r for r in records if r.variant == "majority" and r.meta["category"] == "PRES"]
    cell = split_table(records)["category"]["PRES"]["majority"]
    assert cell["n"] == len(pres)
    assert cell["accuracy"] == round(sum(r.correct for r in pres) / len(pres), 4)


def test_open_figures_and_conflict_counts(records):
    full = [r for r in records if r.variant == "full"]
    f = open_figures(full)
    assert f["n_closed"] + f["n_open"] == 108
    assert f["closed_accuracy"] == 1.0 and f["open_accuracy"] == 0.0
    assert f["open_token_recall"] == 0.5
    # older records without the open scores are scored from their text
    old = _full(full[0], False, answer="CT.", reference="ct", answer_type="open",
                exact_match=None, token_recall=None)
    assert open_figures([old])["open_exact_match"] == 1.0

    given = _full(full[0], True, conflicts=["the answer says there is no lesion, but E1 ..."])
    withheld = _full(full[1], False, abstained=True, conflicts=["..."])
    assert conflict_counts([given, withheld, full[2]]) == {
        "answers_contradicting_evidence": 1, "answers_contradicting_evidence_all": 2}


def test_answered_items_are_held_to_the_majority_on_the_same_items(records):
    from agent.evaluation.splits import answered_table

    majority = [r for r in records if r.variant == "majority"]
    # right on closed PRES, abstaining on every POS item, wrong on every other answer
    full = [_full(r, r.answer_type == "yesno" and r.meta["category"] == "PRES",
                  abstained=r.meta["category"] == "POS") for r in majority]
    table = answered_table([*full, *majority])
    pres = table["PRES"]
    answered = [r for r in majority if r.meta["category"] == "PRES"]
    assert pres["answered"] == pres["n"] == len(answered)
    assert pres["baseline_accuracy"] == round(sum(r.correct for r in answered) / len(answered), 4)
    assert pres["verdict"] == ("above" if pres["accuracy"] > pres["baseline_accuracy"]
                               else "level" if pres["accuracy"] == pres["baseline_accuracy"]
                               else "below")
    assert table["POS"] == {"n": table["POS"]["n"], "answered": 0, "accuracy": None,
                            "baseline_accuracy": None, "verdict": "abstains",
                            "won": 0, "lost": 0, "p_value": 1.0}
    # won and lost are the answered items only one side got right
    assert pres["won"] == sum(not r.correct for r in answered if r.answer_type == "yesno")
    assert pres["lost"] == sum(r.correct for r in answered if r.answer_type != "yesno")
    # wrong on every MODALITY item, where the majority is right on some
    assert table["MODALITY"]["accuracy"] == 0.0 < table["MODALITY"]["baseline_accuracy"]
    assert table["MODALITY"]["verdict"] == "below"
    assert answered_table(full) == {}  # no baseline records: nothing to hold it to

    # Counting only what clears the calibrated threshold: PRES items left out of ``passed``
    # are not answered, and a category with none passing abstains.
    closed_pres = [r for r in answered if r.answer_type == "yesno"]
    kept = {r.item_id for r in closed_pres[: len(closed_pres) // 2]}
    assert kept
    stated = answered_table([*full, *majority], passed=kept)
    assert stated["PRES"]["answered"] == len(kept) and stated["PRES"]["n"] == pres["n"]
    assert stated["PRES"]["accuracy"] == 1.0
    assert stated["MODALITY"]["verdict"] == "abstains"


def test_the_paired_sign_test_is_mcnemars_exact_test():
    from agent.evaluation.metrics import paired_sign_test

    assert paired_sign_test(0, 0) == 1.0
    assert paired_sign_test(3, 4) == 1.0  # "below by one question": no evidence either way
    assert paired_sign_test(4, 3) == paired_sign_test(3, 4)
    # 10 of 10 discordant items one way: 2 * 0.5**10
    assert paired_sign_test(10, 0) == pytest.approx(2 / 1024)
    # 14 won, 5 lost: 2 * P(X <= 5), X ~ Bin(19, 1/2) = 0.0636
    assert paired_sign_test(14, 5) == pytest.approx(0.06357, abs=1e-4)
    # thousands of discordant items (a big library's table) stay exact, not a float overflow
    assert 0.0 < paired_sign_test(1200, 1100) < 0.05
    with pytest.raises(ValueError, match="counts"):
        paired_sign_test(-1, 2)
