"""The evaluation harness: suites, the runner, metrics, calibration fitting and reports.

``medloop eval SUITE`` is the command-line face of it; ``evaluate(...)`` the Python one.
"""

from __future__ import annotations

from agent.evaluation.harness import EvalResult, evaluate
from agent.evaluation.items import EvalItem
from agent.evaluation.readers import SuiteError, load_suite
from agent.evaluation.runner import VARIANTS, Record

__all__ = ["VARIANTS", "EvalItem", "EvalResult", "Record", "SuiteError", "evaluate",
           "load_suite"]
