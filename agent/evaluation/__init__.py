"""The evaluation harness: suites, the runner, metrics, calibration fitting and reports.

``medloop eval SUITE`` (``agent.cli.eval``) is the command-line face of it; ``evaluate(...)``
the Python one. Nothing here imports the command line: it sits above this package.
"""

from __future__ import annotations

from agent.evaluation.baselines import majority_records
from agent.evaluation.folds import Fold, folds_by_image
from agent.evaluation.harness import BASELINES, EvalResult, evaluate
from agent.evaluation.items import EvalItem
from agent.evaluation.readers import SuiteError, load_suite
from agent.evaluation.runner import VARIANTS, Record

__all__ = ["BASELINES", "VARIANTS", "EvalItem", "EvalResult", "Fold", "Record", "SuiteError",
           "evaluate", "folds_by_image", "load_suite", "majority_records"]
