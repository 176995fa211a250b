"""``evaluate``: a suite through the agent, its baselines, metrics, calibration and report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.evaluation.baselines import MAJORITY, majority_records
from agent.evaluation.items import EvalItem
from agent.evaluation.report import calibrate_by_domain, summarise, write_report
from agent.evaluation.runner import Record, Variant, run_suite
from agent.evaluation.splits import answered_table, split_table
from agent.llm.spec import canonical_spec
from agent.trust.calibration import Calibration, save_calibration

__all__ = ["BASELINES", "EvalResult", "evaluate"]

# The sanity baselines: three the runner makes by changing the images the agent is shown, and
# the majority answer, computed from labels alone (``agent.evaluation.baselines``).
BASELINES: tuple[str, ...] = ("blank", "shuffled", "question_only", MAJORITY)


@dataclass
class EvalResult:
    """The records, the report (JSON-able) and the files written.

    ``records`` are the agent's runs (``records.jsonl``); ``baseline_records`` the majority
    baseline's, recomputable from the items at any time. ``calibration`` is the map of the
    suite's main image domain, ``calibrations`` every domain's.
    """

    records: list[Record]
    report: dict[str, Any]
    calibration: Calibration | None = None
    files: list[str] = field(default_factory=list)
    baseline_records: list[Record] = field(default_factory=list)
    calibrations: dict[str, Calibration] = field(default_factory=dict)


def _majority(suite: Sequence[EvalItem], records: Sequence[Record], folds: int,
              seed: int) -> list[Record]:
    """The majority baseline on the items the agent answered, fitted on ``suite``'s folds.

    ``suite`` is the whole suite when a run is cut (``--skip``/``--limit``): each item is then
    answered by the majority of the whole suite's other folds by image, the folds
    ``--library-folds`` builds its libraries from, not of the few other items that ran (a
    100-item run fitted it on 80 items, beside libraries of some 790).
    """
    done = {r.item_id for r in records if r.variant == "full"}
    fitted = majority_records(suite, folds, seed)
    return [r for r in fitted if r.item_id in done]


def _save_path(target: str | Path | Callable[[str], Path], domain: str, main: bool) -> Path:
    """Where a domain's map is saved: the callable's choice, or the path given.

    With a path, a domain other than the main one goes beside it as ``<stem>.<domain>.json``.
    """
    if callable(target):
        return target(domain)
    path = Path(target)
    return path if main else path.with_name(f"{path.stem}.{domain}{path.suffix}")


def evaluate(
    items: Sequence[EvalItem],
    *,
    make_graph: Callable[[], tuple[Any, Any]],
    suite: str = "",
    llm: str = "",
    baselines: Sequence[str] = BASELINES,
    baseline_limit: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    folds: int = 5,
    fit_fraction: float = 0.5,
    target_accuracy: float = 0.9,
    out_dir: str | Path | None = None,
    save_calibration_to: str | Path | Callable[[str], Path] | None = None,
    progress: Callable[[Record, int, int], None] | None = None,
    records: list[Record] | None = None,
    elicit: Callable[[str, str, list[str]], float | None] | None = None,
    suite_items: Sequence[EvalItem] | None = None,
) -> EvalResult:
    """Run ``items`` (and the baselines) and build the report.

    ``make_graph()`` returns a compiled graph and the image store its tools read. Per image
    domain (phantom, clinical), a calibration is fitted on ``fit_fraction`` of the images'
    items and reported on the rest, and cross-fitted over ``folds`` folds by image; the
    majority baseline is cross-validated over the same number of folds by image. The map
    refitted on every item of a domain is saved to ``save_calibration_to`` when given (a path,
    or a function of the domain giving one). ``records`` from an earlier run
    (``records.jsonl``) are reported again instead of running anything. ``suite_items`` is
    the whole suite ``items`` were cut from (default: ``items``): the majority baseline is
    fitted on its folds.
    """
    t0 = time.perf_counter()
    variants: list[Variant] = [b for b in baselines if b != MAJORITY]  # type: ignore[misc]
    if records is None:
        records = run_suite(make_graph, items, variants=("full", *variants), repeats=repeats,
                            seed=seed, baseline_limit=baseline_limit, progress=progress,
                            elicit=elicit)
    extra = (_majority(items if suite_items is None else suite_items, records, folds, seed)
             if MAJORITY in baselines else [])
    summary = summarise([*records, *extra])
    fitted = calibrate_by_domain(records, fit_fraction=fit_fraction, seed=seed,
                                 target_accuracy=target_accuracy, folds=folds)
    for fit_map, _ in fitted.values():  # keyed as the file is: embedded -> embedded:NAME
        fit_map.fitted_for = _canonical(llm)
    main = next(iter(fitted), None)  # the domain with the most items
    cal = fitted[main][0] if main is not None else None
    held = fitted[main][1] if main is not None else None
    report: dict[str, Any] = {
        "suite": suite,
        "llm": llm,
        "n_items": len({r.item_id for r in records if r.variant == "full"}),
        "repeats": repeats,
        "seed": seed,
        "folds": folds,
        "metrics": summary.get("full", {}),
        "baselines": {k: v for k, v in summary.items() if k != "full"},
        "by_split": split_table([*records, *extra]),
        "by_category_answered": answered_table([*records, *extra]),
        # the same, counting as answered only what the cross-fitted map lets through
        "by_category_at_threshold": (
            answered_table([*records, *extra], passed=held["crossfit_passed_ids"])
            if held and "crossfit_passed_ids" in held else {}),
        "calibration": _public(held) if held else None,
        "calibration_by_domain": {d: _public(h) for d, (_, h) in fitted.items()},
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    files: list[str] = []
    if out_dir is not None:
        files = [str(Path(out_dir) / f) for f in write_report(records, report, out_dir, held)]
    if save_calibration_to is not None:
        for d, (c, _) in fitted.items():
            files.append(str(save_calibration(c, _save_path(save_calibration_to, d, d == main))))
    return EvalResult(records=records, report=report, calibration=cal, files=files,
                      baseline_records=extra, calibrations={d: c for d, (c, _) in fitted.items()})


def _public(held: dict[str, Any]) -> dict[str, Any]:
    """The held-out figures without the reliability bins (those go to the plot) or item ids."""
    return {k: v for k, v in held.items()
            if not k.startswith("reliability") and k != "crossfit_passed_ids"}


def _canonical(llm: str) -> str:
    """``llm`` as a calibration is keyed (``canonical_spec``); as given when it does not parse."""
    try:
        return canonical_spec(llm)
    except ValueError:
        return llm
