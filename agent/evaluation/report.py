"""The report of an evaluation run: metrics with intervals, calibration, baselines, plots.

``summarise(records)`` computes, per variant: accuracy (with a Wilson 95 % interval over items,
and the spread over repeats), ECE (15 bins), Brier, AURC (with bootstrap intervals), the
agent's own abstention rate and its selective accuracy, grounding IoU, measurement error,
latency p50/p95 and tool calls per item. ``calibrate_split`` fits a calibration map on a
held-out part of the full-variant items (split by item, with a fixed seed) and reports ECE and
Brier before and after on the rest, with the abstention threshold for a target accuracy.
``write_report`` saves ``report.json``, ``records.jsonl`` and two PNGs (reliability diagram,
latency histogram) drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.evaluation.metrics import (
    aurc,
    bootstrap_ci,
    brier,
    ece,
    ece_noise_floor,
    percentile,
    reliability_bins,
    selective,
    wilson_ci,
)
from agent.evaluation.runner import Record
from agent.trust.calibration import Calibration, abstain_threshold, fit_calibration
from agent.trust.confidence import combine_confidence

__all__ = ["calibrate_split", "summarise", "write_report"]


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _variant_summary(recs: Sequence[Record]) -> dict[str, Any]:
    conf = [r.confidence for r in recs]
    y = [float(r.correct) for r in recs]
    n = len(recs)
    k = sum(y)
    repeats = sorted({r.repeat for r in recs})
    per_repeat = [float(np.mean([float(r.correct) for r in recs if r.repeat == i]))
                  for i in repeats]
    answered = [r for r in recs if not r.abstained]
    ious = [r.iou for r in recs if r.iou is not None]
    errs = [r.size_error_mm for r in recs if r.size_error_mm is not None]
    sized = [r for r in recs if r.answer_type == "number"]
    lat = [r.latency_s for r in recs if r.error is None]
    lo, hi = wilson_ci(k, n)
    out: dict[str, Any] = {
        "n_runs": n,
        "n_items": len({r.item_id for r in recs}),
        "repeats": len(repeats),
        "accuracy": _r(k / n if n else float("nan")),
        "accuracy_ci95": [_r(lo), _r(hi)],
        "accuracy_per_repeat": [_r(a) for a in per_repeat],
        "ece_15": _r(ece(conf, y)),
        "ece_ci95": [_r(v) for v in bootstrap_ci(ece, conf, y)],
        "brier": _r(brier(conf, y)),
        "brier_ci95": [_r(v) for v in bootstrap_ci(brier, conf, y)],
        "aurc": _r(aurc(conf, y)),
        "mean_confidence": _r(float(np.mean(conf)) if conf else float("nan")),
        "abstention_rate": _r(1 - len(answered) / n if n else float("nan")),
        "selective_accuracy": _r(float(np.mean([r.correct for r in answered]))
                                 if answered else float("nan")),
        "grounding_iou": _r(float(np.mean(ious))) if ious else None,
        "size_error_mm_mean": _r(float(np.mean(errs))) if errs else None,
        "size_error_mm_median": _r(float(np.median(errs))) if errs else None,
        "size_unread": sum(1 for r in sized if r.size_error_mm is None),
        "latency_s_p50": _r(percentile(lat, 50), 3),
        "latency_s_p95": _r(percentile(lat, 95), 3),
        "tool_calls_per_item": _r(float(np.mean([r.tool_calls for r in recs])) if recs else
                                  float("nan"), 3),
        "errors": sum(1 for r in recs if r.error),
    }
    out.update(_other_signals(recs))
    kinds = sorted({str(r.meta.get("question_kind")) for r in recs if r.meta.get(
        "question_kind")})
    if kinds:
        out["accuracy_by_kind"] = {
            kd: _r(float(np.mean([r.correct for r in recs if r.meta.get("question_kind") == kd])))
            for kd in kinds
        }
    return out


def _other_signals(recs: Sequence[Record]) -> dict[str, Any]:
    """ECE of the elicited rating and of self-consistency, alone and pooled with the raw one.

    Self-consistency needs repeats: a run's agreement is the share of its item's runs whose
    answer read the same as its own.
    """
    out: dict[str, Any] = {}
    rated = [r for r in recs if r.elicited is not None]
    if rated:
        yr = [float(r.correct) for r in rated]
        out["ece_elicited"] = _r(ece([r.elicited or 0.0 for r in rated], yr))
        out["ece_raw_with_elicited"] = _r(ece(
            [combine_confidence(r.elicited, [r.raw_confidence]) for r in rated], yr))
    agree = agreement(recs)
    if any(a is not None for a in agree):
        pairs = [(r, a) for r, a in zip(recs, agree, strict=True) if a is not None]
        ya = [float(r.correct) for r, _ in pairs]
        out["ece_agreement"] = _r(ece([a for _, a in pairs], ya))
        out["ece_raw_with_agreement"] = _r(ece(
            [combine_confidence(None, [r.raw_confidence], agreement=a) for r, a in pairs], ya))
    return out


def summarise(records: Sequence[Record]) -> dict[str, Any]:
    """Metrics per variant (``full`` and each baseline)."""
    variants = list(dict.fromkeys(r.variant for r in records))
    return {v: _variant_summary([r for r in records if r.variant == v]) for v in variants}


def calibrate_split(
    records: Sequence[Record],
    *,
    fit_fraction: float = 0.5,
    seed: int = 0,
    target_accuracy: float = 0.9,
    method: str = "auto",
) -> tuple[Calibration, dict[str, Any]] | None:
    """Fit calibration on part of the ``full`` items' raw confidences, evaluate on the rest.

    Items (not runs) are split, so repeats of one item never straddle the split. Returns the
    map (refitted on every item, for saving) and the held-out figures, or None when there are
    fewer than 4 items.
    """
    full = [r for r in records if r.variant == "full" and r.error is None]
    ids = sorted({r.item_id for r in full})
    if len(ids) < 4:
        return None
    rng = random.Random(seed)
    rng.shuffle(ids)
    cut = max(1, min(len(ids) - 1, round(len(ids) * fit_fraction)))
    fit_ids = set(ids[:cut])
    fit = [r for r in full if r.item_id in fit_ids]
    test = [r for r in full if r.item_id not in fit_ids]
    cal = fit_calibration([r.raw_confidence for r in fit], [r.correct for r in fit],
                          method=method)  # type: ignore[arg-type]
    raw_t = [r.raw_confidence for r in test]
    y_t = [float(r.correct) for r in test]
    cal_t = [float(v) for v in cal.apply(np.asarray(raw_t))]
    cal_f = [float(v) for v in cal.apply(np.asarray([r.raw_confidence for r in fit]))]
    thr = abstain_threshold(cal_f, [r.correct for r in fit], target_accuracy)
    abst, sel = selective(cal_t, y_t, thr) if thr is not None else (1.0, float("nan"))
    held = {
        "method": cal.method,
        "params": cal.params,
        "n_fit_items": len(fit_ids),
        "n_test_items": len(ids) - len(fit_ids),
        "n_test_runs": len(test),
        "test_accuracy": _r(float(np.mean(y_t))),
        "ece_before": _r(ece(raw_t, y_t)),
        "ece_before_ci95": [_r(v) for v in bootstrap_ci(ece, raw_t, y_t)],
        "ece_after": _r(ece(cal_t, y_t)),
        "ece_after_ci95": [_r(v) for v in bootstrap_ci(ece, cal_t, y_t)],
        "ece_noise_floor": _r(ece_noise_floor(cal_t)),
        "brier_before": _r(brier(raw_t, y_t)),
        "brier_after": _r(brier(cal_t, y_t)),
        "aurc_before": _r(aurc(raw_t, y_t)),
        "aurc_after": _r(aurc(cal_t, y_t)),
        "target_accuracy": target_accuracy,
        "abstain_below": _r(thr),
        "abstention_rate": _r(abst),
        "selective_accuracy": _r(sel),
        "cv_log_loss": cal.metrics,
        "reliability_before": reliability_bins(raw_t, y_t),
        "reliability_after": reliability_bins(cal_t, y_t),
    }
    held.update(_crossfit(full, ids, cut, method))
    final = fit_calibration([r.raw_confidence for r in full], [r.correct for r in full],
                            method=cal.method)
    final_cal = [float(v) for v in final.apply(np.asarray([r.raw_confidence for r in full]))]
    final.abstain_below = abstain_threshold(final_cal, [r.correct for r in full],
                                            target_accuracy)
    final.target_accuracy = target_accuracy
    final.metrics = {"held_out_ece_before": float(ece(raw_t, y_t)),
                     "held_out_ece_after": float(ece(cal_t, y_t))}
    return final, held


def agreement(records: Sequence[Record]) -> list[float | None]:
    """Each run's self-consistency: the share of its item's runs whose answer read the same.

    None for an item run once (no agreement to measure).
    """
    by_item: dict[str, list[Record]] = {}
    for r in records:
        by_item.setdefault(r.item_id, []).append(r)
    return [sum(o.parsed == r.parsed for o in by_item[r.item_id]) / len(by_item[r.item_id])
            if len(by_item[r.item_id]) > 1 else None for r in records]


def _crossfit(full: Sequence[Record], ids: Sequence[str], cut: int, method: str
              ) -> dict[str, Any]:
    """Two-fold cross-fitting: each half calibrated by a map fitted on the other half.

    Every item then has an out-of-sample calibrated confidence, so ECE is measured on all of
    them rather than on the held-out half only (finite-sample ECE is biased upward, more so on
    fewer items). With repeats, the same is done for the raw confidence pooled with
    self-consistency (``combine_confidence(..., agreement=)``).
    """
    folds = [set(ids[:cut]), set(ids[cut:])]
    agree = agreement(full)
    signals: dict[str, list[float]] = {"": [r.raw_confidence for r in full]}
    if all(a is not None for a in agree):
        signals["_with_agreement"] = [
            combine_confidence(None, [r.raw_confidence], agreement=a)
            for r, a in zip(full, agree, strict=True)]
    y = [float(r.correct) for r in full]
    out: dict[str, Any] = {"crossfit_n_items": len(ids)}
    for suffix, x in signals.items():
        cal_x = list(x)
        for fold in folds:
            train = [i for i, r in enumerate(full) if r.item_id not in fold]
            test = [i for i, r in enumerate(full) if r.item_id in fold]
            if not train or not test:
                return {}
            fitted = fit_calibration([x[i] for i in train], [bool(y[i]) for i in train],
                                     method=method)  # type: ignore[arg-type]
            for i, v in zip(test, fitted.apply(np.asarray([x[i] for i in test])), strict=True):
                cal_x[i] = float(v)
        out[f"crossfit_ece_before{suffix}"] = _r(ece(x, y))
        out[f"crossfit_ece_after{suffix}"] = _r(ece(cal_x, y))
        out[f"crossfit_ece_after{suffix}_ci95"] = [_r(v) for v in bootstrap_ci(ece, cal_x, y)]
        out[f"crossfit_ece_noise_floor{suffix}"] = _r(ece_noise_floor(cal_x))
        out[f"crossfit_brier_after{suffix}"] = _r(brier(cal_x, y))
        out[f"crossfit_aurc_after{suffix}"] = _r(aurc(cal_x, y))
    return out


def _plots(records: Sequence[Record], held: dict[str, Any] | None, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in records if r.variant == "full"]
    written = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    series = [("agent", reliability_bins([r.confidence for r in full],
                                         [float(r.correct) for r in full]))]
    if held:
        series += [("raw, held-out", held["reliability_before"]),
                   ("calibrated, held-out", held["reliability_after"])]
    for label, bins in series:
        if bins:
            ax.plot([b[1] for b in bins], [b[2] for b in bins], "o-", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability (15 bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    written.append("reliability.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for v in dict.fromkeys(r.variant for r in records):
        lat = [r.latency_s for r in records if r.variant == v and r.error is None]
        if lat:
            ax.hist(lat, bins=20, alpha=0.6, label=v)
    ax.set_xlabel("latency per item (s)")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    written.append("latency.png")
    return written


def write_report(
    records: Sequence[Record], report: dict[str, Any], out_dir: str | Path,
    held: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``report.json``, ``records.jsonl`` and the PNGs to ``out_dir``; the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n",
                                     encoding="utf-8")
    with (out / "records.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.as_dict(), default=str) + "\n")
    return ["report.json", "records.jsonl", *_plots(records, held, out)]
