"""The report of an evaluation run: metrics with intervals, calibration, baselines, plots.

``summarise(records)`` computes, per variant: accuracy (with a Wilson 95 % interval over items,
and the spread over repeats), ECE (15 bins), Brier, AURC (with bootstrap intervals), the
agent's own abstention rate and its selective accuracy, grounding IoU, measurement error,
latency p50/p95 and tool calls per item; closed and open accuracy, the open answers' exact
match and token recall, and the answers that contradict their own cited evidence
(``agent.evaluation.splits``). ``calibrate_split`` fits a calibration map on a held-out part of
the full-variant items (split by *image*, with a fixed seed: no image's questions on both
sides) and reports ECE and Brier before and after on the rest, with the abstention threshold
for a target accuracy; it also cross-fits (k folds by image) so every item gets an
out-of-sample calibrated confidence. ``calibrate_by_domain`` does this once per image domain
(phantom, clinical): each map is fitted, reported and saved for its own domain only, with a
map per question form (closed, open) inside it where the form has enough items.
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

from agent.evaluation.folds import folds_by_image, image_groups
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
from agent.evaluation.splits import conflict_counts, open_figures
from agent.trust.calibration import (
    CLINICAL,
    PHANTOM,
    Calibration,
    abstain_threshold,
    fit_calibration,
    question_form,
)
from agent.trust.confidence import combine_confidence

__all__ = ["calibrate_by_domain", "calibrate_split", "record_domain", "summarise",
           "write_report"]


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _time_split(recs: Sequence[Record]) -> dict[str, Any]:
    """Where an item's time went: planner calls and tool calls, p50 per item (None if unknown).

    The rest of the latency is the graph's own work: ingest, checks, confidence, calibration.
    """
    timed = [r for r in recs if r.planner_s is not None]
    if not timed:
        return {"planner_s_p50": None, "tools_s_p50": None, "planner_calls_per_item": None}
    return {"planner_s_p50": _r(percentile([r.planner_s or 0.0 for r in timed], 50), 3),
            "tools_s_p50": _r(percentile([r.tools_s or 0.0 for r in timed], 50), 3),
            "planner_calls_per_item": _r(float(np.mean([r.planner_calls or 0
                                                        for r in timed])), 3)}


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
        "ece_noise_floor": _r(ece_noise_floor(conf)),
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
        **_time_split(recs),
        "tool_calls_per_item": _r(float(np.mean([r.tool_calls for r in recs])) if recs else
                                  float("nan"), 3),
        "errors": sum(1 for r in recs if r.error),
    }
    out.update(open_figures(recs))
    out.update(conflict_counts(recs))
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


def record_domain(record: Record) -> str:
    """The image domain of a record's item; older records without one are told by their meta."""
    return record.domain or (PHANTOM if record.meta.get("phantom_kind") else CLINICAL)


def _record_keys(record: Record) -> list[str]:
    """A record's images, or its item id for records saved before images were recorded."""
    return list(record.item_images) or [f"item:{record.item_id}"]


def _forms(records: Sequence[Record]) -> list[str]:
    """Each record's question form (closed or open): each form gets its own map."""
    return [question_form(r.question) for r in records]


def _fit_split(full: Sequence[Record], fit_fraction: float, seed: int) -> set[str] | None:
    """The item ids to fit on: whole image groups, shuffled, up to ``fit_fraction`` of items.

    None when the items cannot be split (a single image group).
    """
    groups = [sorted({full[i].item_id for i in g}) for g in image_groups(full, keys=_record_keys)]
    if len(groups) < 2:
        return None
    random.Random(seed).shuffle(groups)
    n_items = sum(len(g) for g in groups)
    cut = max(1, min(n_items - 1, round(n_items * fit_fraction)))
    fit: set[str] = set()
    for g in groups[:-1]:  # the last group always stays out: both sides are non-empty
        if len(fit) >= cut:
            break
        fit.update(g)
    return fit


def calibrate_split(
    records: Sequence[Record],
    *,
    fit_fraction: float = 0.5,
    seed: int = 0,
    target_accuracy: float = 0.9,
    method: str = "auto",
    folds: int = 2,
    domain: str | None = None,
) -> tuple[Calibration, dict[str, Any]] | None:
    """Fit calibration on part of the ``full`` items' raw confidences, evaluate on the rest.

    Images (not items, not runs) are split, so neither a repeat of an item nor a reworded
    question about the same image straddles the split; ``folds`` is the k of the cross-fit.
    ``domain`` is recorded on the map (default: the records' domain, ``clinical`` if they
    mix). Returns the map (refitted on every item, for saving) and the held-out figures, or
    None when there are fewer than 4 items or a single image.
    """
    full = [r for r in records if r.variant == "full" and r.error is None]
    ids = sorted({r.item_id for r in full})
    if len(ids) < 4:
        return None
    fit_ids = _fit_split(full, fit_fraction, seed)
    if fit_ids is None:
        return None
    fit = [r for r in full if r.item_id in fit_ids]
    test = [r for r in full if r.item_id not in fit_ids]
    cal = fit_calibration([r.raw_confidence for r in fit], [r.correct for r in fit],
                          method=method, forms=_forms(fit))  # type: ignore[arg-type]
    raw_t = [r.raw_confidence for r in test]
    y_t = [float(r.correct) for r in test]
    cal_t = [float(v) for v in cal.apply_forms(raw_t, _forms(test))]
    cal_f = [float(v) for v in cal.apply_forms([r.raw_confidence for r in fit], _forms(fit))]
    thr = abstain_threshold(cal_f, [r.correct for r in fit], target_accuracy)
    abst, sel = selective(cal_t, y_t, thr) if thr is not None else (1.0, float("nan"))
    domains = {record_domain(r) for r in full}
    domain = domain or (domains.pop() if len(domains) == 1 else CLINICAL)
    held = {
        "domain": domain,
        "method": cal.method,
        "params": cal.params,
        "by_form": {f: {"method": c.method, "params": c.params, "n_fit": c.n_fit}
                    for f, c in cal.by_form.items()},
        "split_by": "image" if all(r.item_images for r in full) else "item",
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
        "coverage": _r(1.0 - abst),
        "selective_accuracy": _r(sel),
        "cv_log_loss": cal.metrics,
        "reliability_before": reliability_bins(raw_t, y_t),
        "reliability_after": reliability_bins(cal_t, y_t),
    }
    held.update(_crossfit(full, folds, seed, method, target_accuracy))
    final = fit_calibration([r.raw_confidence for r in full], [r.correct for r in full],
                            method=method, forms=_forms(full))  # type: ignore[arg-type]
    final_cal = [float(v) for v in final.apply_forms([r.raw_confidence for r in full],
                                                     _forms(full))]
    final.abstain_below = abstain_threshold(final_cal, [r.correct for r in full],
                                            target_accuracy)
    final.target_accuracy = target_accuracy
    for c in (final, *final.by_form.values()):
        c.domain = domain  # a form's map is fitted on the same domain's items
    final.metrics = {"held_out_ece_before": float(ece(raw_t, y_t)),
                     "held_out_ece_after": float(ece(cal_t, y_t))}
    return final, held


def calibrate_by_domain(
    records: Sequence[Record], **kwargs: Any
) -> dict[str, tuple[Calibration, dict[str, Any]]]:
    """``calibrate_split`` on each image domain's records alone, largest domain first.

    A phantom map and a clinical map are never fitted on each other's items; a domain with too
    few items to split gets no map (its answers stay uncalibrated).
    """
    by: dict[str, list[Record]] = {}
    for r in records:
        by.setdefault(record_domain(r), []).append(r)
    out: dict[str, tuple[Calibration, dict[str, Any]]] = {}
    for d in sorted(by, key=lambda d: -sum(r.variant == "full" for r in by[d])):
        split = calibrate_split(by[d], domain=d, **kwargs)
        if split is not None:
            out[d] = split
    return out


def agreement(records: Sequence[Record]) -> list[float | None]:
    """Each run's self-consistency: the share of its item's runs whose answer read the same.

    None for an item run once (no agreement to measure).
    """
    by_item: dict[str, list[Record]] = {}
    for r in records:
        by_item.setdefault(r.item_id, []).append(r)
    return [sum(o.parsed == r.parsed for o in by_item[r.item_id]) / len(by_item[r.item_id])
            if len(by_item[r.item_id]) > 1 else None for r in records]


def _crossfit(full: Sequence[Record], k: int, seed: int, method: str,
              target_accuracy: float) -> dict[str, Any]:
    """k-fold cross-fitting by image: each fold calibrated by a map fitted on the others.

    Every item then has an out-of-sample calibrated confidence, so ECE is measured on all of
    them rather than on the held-out part only (finite-sample ECE is biased upward, more so on
    fewer items). Each fold's abstention threshold is chosen on its fitting folds, so the
    coverage and selective accuracy are out of sample too. With repeats, the same is done for
    the raw confidence pooled with self-consistency (``combine_confidence(..., agreement=)``).
    """
    folds = folds_by_image(full, k, seed, keys=_record_keys)
    if len(folds) < 2:
        return {}
    agree = agreement(full)
    signals: dict[str, list[float]] = {"": [r.raw_confidence for r in full]}
    if all(a is not None for a in agree):
        signals["_with_agreement"] = [
            combine_confidence(None, [r.raw_confidence], agreement=a)
            for r, a in zip(full, agree, strict=True)]
    y = [float(r.correct) for r in full]
    forms = _forms(full)
    out: dict[str, Any] = {"crossfit_n_items": len({r.item_id for r in full}),
                           "crossfit_folds": len(folds)}
    for suffix, x in signals.items():
        cal_x = list(x)
        answered = [False] * len(full)
        for fold in folds:
            fitted = fit_calibration([x[i] for i in fold.fit], [bool(y[i]) for i in fold.fit],
                                     method=method,  # type: ignore[arg-type]
                                     forms=[forms[i] for i in fold.fit])
            on_fit = [float(v) for v in fitted.apply_forms([x[i] for i in fold.fit],
                                                           [forms[i] for i in fold.fit])]
            thr = abstain_threshold(on_fit, [y[i] for i in fold.fit], target_accuracy)
            scored = fitted.apply_forms([x[i] for i in fold.scored],
                                        [forms[i] for i in fold.scored])
            for i, v in zip(fold.scored, scored, strict=True):
                cal_x[i] = float(v)
                answered[i] = thr is not None and cal_x[i] >= thr
        kept = [y[i] for i in range(len(full)) if answered[i]]
        if not suffix:  # which items a calibrated agent would state, for the category table
            out["crossfit_passed_ids"] = sorted({full[i].item_id for i in range(len(full))
                                                 if answered[i] and full[i].repeat == 0})
        out[f"crossfit_ece_before{suffix}"] = _r(ece(x, y))
        out[f"crossfit_ece_after{suffix}"] = _r(ece(cal_x, y))
        out[f"crossfit_ece_after{suffix}_ci95"] = [_r(v) for v in bootstrap_ci(ece, cal_x, y)]
        out[f"crossfit_ece_noise_floor{suffix}"] = _r(ece_noise_floor(cal_x))
        out[f"crossfit_brier_after{suffix}"] = _r(brier(cal_x, y))
        out[f"crossfit_aurc_after{suffix}"] = _r(aurc(cal_x, y))
        out[f"crossfit_coverage{suffix}"] = _r(len(kept) / len(full))
        out[f"crossfit_selective_accuracy{suffix}"] = (
            _r(float(np.mean(kept))) if kept else None)
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
