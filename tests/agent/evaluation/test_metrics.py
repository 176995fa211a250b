"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.evaluation.metrics import (
    aurc,
    bootstrap_ci,
    box_iou,
    brier,
    ece,
    grounding_iou,
    percentile,
    reliability_bins,
    selective,
    wilson_ci,
)

CONF = [0.9, 0.9, 0.2, 0.2]
RIGHT = [1, 0, 0, 0]


def test_ece_by_hand():
    # bin (0.867, 0.933]: conf 0.9, acc 0.5 -> 0.4 x 2 items; bin (0.133, 0.2]: conf 0.2,
    # acc 0 -> 0.2 x 2 items; (0.8 + 0.4) / 4 = 0.3
    assert ece(CONF, RIGHT) == pytest.approx(0.3)
    assert ece([1.0, 0.0], [1, 0]) == pytest.approx(0.0)
    assert ece([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)


def test_ece_bin_edges_and_counts():
    bins = reliability_bins([0.0, 1 / 15, 0.5, 1.0], [0, 1, 1, 1])
    # 0 and exactly 1/15 share the first bin (right-closed bins); 1.0 falls in the last
    assert [(round(lo, 4), n) for lo, _, _, n in bins] == [(0.0, 2), (0.4667, 1), (0.9333, 1)]
    assert bins[0][2] == pytest.approx(0.5)


def test_brier_by_hand():
    assert brier(CONF, RIGHT) == pytest.approx((0.01 + 0.81 + 0.04 + 0.04) / 4)
    assert brier([1.0, 0.0], [1, 0]) == 0.0


def test_aurc_by_hand():
    # sorted by confidence: right, wrong, wrong, wrong -> risks 0, 1/2, 2/3, 3/4
    assert aurc(CONF, RIGHT) == pytest.approx((0 + 0.5 + 2 / 3 + 0.75) / 4)
    # a perfect ranking beats the reverse ranking
    assert aurc([0.9, 0.1], [1, 0]) < aurc([0.1, 0.9], [1, 0])


def test_selective_accuracy_and_abstention():
    assert selective(CONF, RIGHT, 0.5) == (0.5, 0.5)
    rate, acc = selective(CONF, RIGHT, 0.95)
    assert rate == 1.0 and math.isnan(acc)


def test_wilson_interval():
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci(0, 10)[0] == 0.0


def test_iou_and_grounding():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 2, 2], [2, 2, 4, 4]) == 0.0
    assert grounding_iou([(0, 0, 2, 2), (10, 10, 12, 12)], [(0, 0, 2, 2)]) == pytest.approx(0.5)
    assert grounding_iou([], [(0, 0, 1, 1)]) is None
    assert grounding_iou([(0, 0, 2, 2)], []) == 0.0


def test_percentile_and_bootstrap():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    lo, hi = bootstrap_ci(brier, CONF, RIGHT, n_boot=200)
    assert 0.0 <= lo <= brier(CONF, RIGHT) <= hi <= 1.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="3 confidences but 2 outcomes"):
        ece([0.1, 0.2, 0.3], [1, 0])


def test_ece_noise_floor_is_what_perfect_calibration_scores_on_few_items():
    from agent.evaluation.metrics import ece, ece_noise_floor

    assert ece_noise_floor([1.0] * 50 + [0.0] * 50) == 0.0  # certain outcomes: no noise
    floor_small = ece_noise_floor([0.8] * 50)
    floor_big = ece_noise_floor([0.8] * 5000)
    # Bernoulli(0.8) on 50 items: |mean - 0.8| averages about sqrt(0.16/50)*0.8 = 0.045
    assert 0.03 < floor_small < 0.06
    assert floor_big < floor_small / 5  # shrinks as 1/sqrt(n)
    rng = np.random.default_rng(1)
    calibrated = [ece([0.8] * 50, list(rng.random(50) < 0.8)) for _ in range(300)]
    assert abs(float(np.mean(calibrated)) - floor_small) < 0.01
