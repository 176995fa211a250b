"""tools.ingest.fuzz: a short run (bench/fuzz_ingest.py runs >= 10,000 cases)."""

from __future__ import annotations

from tools.ingest.fuzz import BAD_OUTCOMES, cases, png_bombs, run_cases, seed_files


def test_fuzzed_files_load_or_raise_ingest_errors() -> None:
    items = [*cases(seed_files(), 6000, seed=12345), *png_bombs().items()]
    report = run_cases(items, case_timeout_s=20.0, decode_timeout_s=5.0)
    assert report.total == len(items)
    assert report.bad == [], report.bad[:5]
    assert not any(o.startswith(BAD_OUTCOMES) for o in report.outcomes)
    # The run exercised both sides of the contract.
    assert report.outcomes["ok"] > 50 and report.total - report.outcomes["ok"] > 50
