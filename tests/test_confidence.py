from __future__ import annotations

import pytest

from tools.confidence import combine_confidence, logit, sigmoid


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
