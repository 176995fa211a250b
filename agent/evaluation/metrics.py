"""Metric functions: accuracy, calibration (ECE, Brier), selective prediction, grounding.

Pure functions over plain sequences, so every figure in a report can be recomputed by hand.
Conventions: ``conf`` are probabilities in [0, 1] that the answer is right; ``correct`` are 0/1;
boxes are XYXY pixels (x1/y1 exclusive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "aurc",
    "bootstrap_ci",
    "box_iou",
    "brier",
    "ece",
    "ece_noise_floor",
    "grounding_iou",
    "paired_sign_test",
    "percentile",
    "reliability_bins",
    "selective",
    "wilson_ci",
]


def _arrays(conf: Sequence[float], correct: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(conf, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} confidences but {y.size} outcomes")
    return p, y


def reliability_bins(
    conf: Sequence[float], correct: Sequence[float], n_bins: int = 15
) -> list[tuple[float, float, float, int]]:
    """Equal-width bins over [0, 1]: ``(lower edge, mean confidence, accuracy, count)``.

    Bin i holds ``lo_i < p <= hi_i`` (the first bin also holds 0), as in Guo et al. 2017.
    Empty bins are left out.
    """
    p, y = _arrays(conf, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append((float(edges[b]), float(p[m].mean()), float(y[m].mean()), int(m.sum())))
    return out


def ece(conf: Sequence[float], correct: Sequence[float], n_bins: int = 15) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| per bin."""
    p, _ = _arrays(conf, correct)
    if p.size == 0:
        return float("nan")
    return float(sum(n * abs(acc - c) for _, c, acc, n in reliability_bins(conf, correct, n_bins))
                 / p.size)


def ece_noise_floor(conf: Sequence[float], n_bins: int = 15, *, n_draws: int = 500,
                    seed: int = 0) -> float:
    """The ECE a *perfectly calibrated* confidence would show on this many items, on average.

    Outcomes are drawn as Bernoulli(conf) and scored with ``ece``. ECE measured on a finite set
    is never 0 even when calibration is perfect: with ~100 items and confidences near 0.85 the
    sampling noise alone is a few hundredths. An ECE near this floor cannot be told apart from
    perfect calibration on this set; read a target such as ECE <= 0.05 against it.
    """
    p = np.clip(np.asarray(conf, dtype=float), 0.0, 1.0)
    if p.size == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    draws = (rng.random((n_draws, p.size)) < p).astype(float)
    return float(np.mean([ece(p, d, n_bins) for d in draws]))


def brier(conf: Sequence[float], correct: Sequence[float]) -> float:
    """Brier score: mean squared difference between confidence and outcome (lower is better)."""
    p, y = _arrays(conf, correct)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def aurc(conf: Sequence[float], correct: Sequence[float]) -> float:
    """Area under the risk–coverage curve (lower is better).

    Items sorted by decreasing confidence; at each coverage k/n the risk is the error rate of
    the k most confident; AURC is the mean of those n risks (ties broken by input order).
    """
    p, y = _arrays(conf, correct)
    if p.size == 0:
        return float("nan")
    order = np.argsort(-p, kind="stable")
    errors = 1.0 - y[order]
    risk = np.cumsum(errors) / np.arange(1, p.size + 1)
    return float(risk.mean())


def selective(
    conf: Sequence[float], correct: Sequence[float], threshold: float
) -> tuple[float, float]:
    """``(abstention rate, accuracy on the answered)`` when abstaining below ``threshold``.

    The accuracy is NaN when every item abstains.
    """
    p, y = _arrays(conf, correct)
    answered = p >= threshold
    rate = float(1.0 - answered.mean()) if p.size else float("nan")
    acc = float(y[answered].mean()) if answered.any() else float("nan")
    return rate, acc


def wilson_ci(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (95 % by default)."""
    if n == 0:
        return float("nan"), float("nan")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_sign_test(won: int, lost: int) -> float:
    """Two-sided exact p-value that two answerers on the same items are equally often right.

    McNemar's exact test: only the items where one is right and the other wrong count (``won``
    by the first, ``lost`` to it); under the null each such item goes either way with
    probability 1/2. A category "below its majority" by one question of 37 reads p = 1.0 here,
    which is what the per-category verdicts need beside them: a difference in counts is not a
    difference in skill until the discordant items say so.
    """
    from retrievers.question_kinds import sign_test  # the library's one-sided test, exact

    if won < 0 or lost < 0:
        raise ValueError(f"won and lost are counts, got {won} and {lost}")
    return min(1.0, 2.0 * sign_test(max(won, lost), min(won, lost)))


def bootstrap_ci(
    fn: object, conf: Sequence[float], correct: Sequence[float], *, n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``fn(conf, correct)`` over items."""
    p, y = _arrays(conf, correct)
    if p.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, p.size, p.size)
        vals.append(fn(p[i], y[i]))  # type: ignore[operator]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two XYXY boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def grounding_iou(
    truth: Sequence[Sequence[float]], predicted: Sequence[Sequence[float]]
) -> float | None:
    """Mean over ground-truth boxes of the best IoU with any predicted box.

    None when there is no ground-truth box (nothing to ground); 0 for a truth box no
    prediction overlaps.
    """
    if not truth:
        return None
    return float(np.mean([max((box_iou(t, q) for q in predicted), default=0.0) for t in truth]))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) of ``values``; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float(
        "nan")
