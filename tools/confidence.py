"""Combining confidence signals into one number.

The planner's verbalised confidence alone is badly over-confident in small and medical models,
so it is pooled with the tools' own scores (mask quality, retrieval similarity, classifier
probability) in log-odds space, then penalised for contradictions and dropped claims. The result
goes through a calibration map (identity until one is fitted on held-out data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

_EPS = 1e-4
# No single signal may claim more than this before calibration: a deterministic tool's score
# of 1.0 says its numbers are exact, not that the planner's reading of them is right.
_SIGNAL_RANGE = (0.05, 0.95)


def logit(p: float) -> float:
    """Log-odds of ``p``, clipped away from 0 and 1."""
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    """Inverse of ``logit``."""
    return 1.0 / (1.0 + math.exp(-x))


def combine_confidence(
    verbal: float | None,
    tool_scores: Sequence[float],
    *,
    contradictions: int = 0,
    dropped_claims: int = 0,
    verbal_weight: float = 0.4,
    calibrate: Callable[[float], float] | None = None,
) -> float:
    """One confidence in [0, 1] from the planner's estimate and the tools' scores.

    A weighted mean of log-odds (the planner weighs ``verbal_weight``, the tools share the
    rest; each signal clipped to [0.05, 0.95]), shrunk toward 0.5 by each contradiction and
    each claim that had to be dropped.
    """
    lo, hi = _SIGNAL_RANGE

    def clip(p: float) -> float:
        return min(max(p, lo), hi)

    terms: list[tuple[float, float]] = []
    if verbal is not None:
        terms.append((verbal_weight, logit(clip(verbal))))
    if tool_scores:
        w = (1 - verbal_weight) if verbal is not None else 1.0
        terms.extend((w / len(tool_scores), logit(clip(s))) for s in tool_scores)
    if not terms:
        return 0.5
    z = sum(w * x for w, x in terms) / sum(w for w, _ in terms)
    z *= 0.5**contradictions * 0.75**dropped_claims
    p = sigmoid(z)
    return float(min(max(calibrate(p) if calibrate else p, 0.0), 1.0))
