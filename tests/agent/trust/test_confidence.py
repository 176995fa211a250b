from __future__ import annotations

import pytest

from agent.trust.confidence import combine_confidence, logit, sigmoid


def test_logit_sigmoid_round_trip():
    for p in (0.01, 0.3, 0.5, 0.9):
        assert sigmoid(logit(p)) == pytest.approx(p)


def test_pooling_moves_toward_tools():
    over = combine_confidence(0.99, [0.6, 0.6])
    assert 0.6 < over < 0.99
    assert combine_confidence(None, [0.8]) == pytest.approx(0.8)
    assert combine_confidence(None, []) == 0.5


def test_contradictions_and_dropped_claims_shrink_toward_half():
    base = combine_confidence(0.9, [0.9])
    assert 0.5 < combine_confidence(0.9, [0.9], contradictions=1) < base
    assert 0.5 < combine_confidence(0.9, [0.9], dropped_claims=2) < base
    low = combine_confidence(0.1, [0.1])
    assert low < combine_confidence(0.1, [0.1], contradictions=1) < 0.5


def test_no_single_signal_saturates():
    assert combine_confidence(None, [1.0]) == pytest.approx(0.95)
    assert combine_confidence(1.0, [1.0, 1.0]) == pytest.approx(0.95)
    assert combine_confidence(0.0, []) == pytest.approx(0.05)


def test_calibration_map_applied_and_clipped():
    assert combine_confidence(0.9, [], calibrate=lambda p: p - 0.2) == pytest.approx(0.7, abs=0.01)
    assert combine_confidence(0.9, [], calibrate=lambda p: 2.0) == 1.0


def test_answer_keys_compare_what_the_question_asks_for():
    from agent.trust.confidence import agreement_share, answer_key

    count = "How many focal lesions are in this image?"
    assert answer_key(count, "There are 2 lesions (E1, L2).") == answer_key(count, "2")
    assert answer_key(count, "There are 2 lesions.") != answer_key(count, "Three: 3 lesions.")
    side = "Is the lesion on the patient's left or right side?"
    assert answer_key(side, "On the patient's right side.") == answer_key(side, "right")
    assert answer_key(side, "right") != answer_key(side, "left")
    where = "In which quadrant of the image is the lesion?"
    assert answer_key(where, "In the upper left.") == answer_key(where, "upper-left, near E1")
    assert answer_key(where, "upper left") != answer_key(where, "lower left")
    yesno = "Is there a focal lesion in this image?"
    assert answer_key(yesno, "Yes, one lesion.") != answer_key(yesno, "No focal lesion.")
    assert answer_key(yesno, "Yes.") == answer_key(yesno, "There is one.")
    free = "Describe the image."
    assert answer_key(free, "A chest radiograph") == answer_key(free, "a radiograph, chest")

    assert agreement_share(count, "2", []) is None
    assert agreement_share(count, "2", ["2.", "3", "2 lesions"]) == 0.75
