"""``evaluate``: a suite through the agent, its baselines, metrics, calibration and report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.evaluation.items import EvalItem
from agent.evaluation.report import calibrate_split, summarise, write_report
from agent.evaluation.runner import Record, Variant, run_suite
from agent.trust.calibration import Calibration, save_calibration

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """The records, the report (JSON-able) and the files written."""

    records: list[Record]
    report: dict[str, Any]
    calibration: Calibration | None = None
    files: list[str] = field(default_factory=list)


def evaluate(
    items: Sequence[EvalItem],
    *,
    make_graph: Callable[[], tuple[Any, Any]],
    suite: str = "",
    llm: str = "",
    baselines: Sequence[Variant] = ("blank", "shuffled", "question_only"),
    baseline_limit: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    fit_fraction: float = 0.5,
    target_accuracy: float = 0.9,
    out_dir: str | Path | None = None,
    save_calibration_to: str | Path | None = None,
    progress: Callable[[Record, int, int], None] | None = None,
    records: list[Record] | None = None,
    elicit: Callable[[str, str, list[str]], float | None] | None = None,
) -> EvalResult:
    """Run ``items`` (and the baselines) and build the report.

    ``make_graph()`` returns a compiled graph and the image store its tools read. The
    calibration is fitted on ``fit_fraction`` of the items and reported on the rest; the map
    refitted on every item is saved to ``save_calibration_to`` when given. ``records`` from an
    earlier run (``records.jsonl``) are reported again instead of running anything.
    """
    t0 = time.perf_counter()
    if records is None:
        records = run_suite(make_graph, items, variants=("full", *baselines), repeats=repeats,
                            seed=seed, baseline_limit=baseline_limit, progress=progress,
                            elicit=elicit)
    summary = summarise(records)
    split = calibrate_split(records, fit_fraction=fit_fraction, seed=seed,
                            target_accuracy=target_accuracy)
    cal, held = split if split else (None, None)
    if cal is not None:
        cal.fitted_for = llm
    report: dict[str, Any] = {
        "suite": suite,
        "llm": llm,
        "n_items": len({r.item_id for r in records if r.variant == "full"}),
        "repeats": repeats,
        "seed": seed,
        "metrics": summary.get("full", {}),
        "baselines": {k: v for k, v in summary.items() if k != "full"},
        "calibration": ({k: v for k, v in held.items() if not k.startswith("reliability")}
                        if held else None),
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    files: list[str] = []
    if out_dir is not None:
        files = [str(Path(out_dir) / f) for f in write_report(records, report, out_dir, held)]
    if save_calibration_to is not None and cal is not None:
        files.append(str(save_calibration(cal, save_calibration_to)))
    return EvalResult(records=records, report=report, calibration=cal, files=files)
