"""Reports: cross-fitted calibration and self-consistency over repeated items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _records(conf: list[float], correct: list[bool], repeats: int = 1,
             parsed: list[str] | None = None) -> list:
    from agent.evaluation.runner import Record

    n = len(conf) // repeats
    return [Record(item_id=f"q{i % n}", variant="full", repeat=i // n, question="?",
                   reference="yes", answer_type="yesno", answer="yes",
                   parsed=(parsed[i] if parsed else "yes"), correct=ok, confidence=c,
                   raw_confidence=c, abstained=False, latency_s=1.0, tool_calls=1)
            for i, (c, ok) in enumerate(zip(conf, correct, strict=True))]


def test_cross_fitted_calibration_scores_every_item_out_of_sample():
    from agent.evaluation.report import calibrate_split

    rng = np.random.default_rng(0)
    # Over-confident: says 0.9, right about half the time.
    recs = _records([0.9] * 200, list(rng.random(200) < 0.5))
    _, held = calibrate_split(recs, fit_fraction=0.5, seed=0)
    assert held["crossfit_n_items"] == 200
    assert held["crossfit_ece_before"] > 0.3
    assert held["crossfit_ece_after"] < 0.1  # each half mapped by the other half's fit
    assert "crossfit_ece_after_with_agreement" not in held  # no repeats: no agreement


def test_the_items_a_calibrated_agent_would_state_are_named_out_of_sample():
    from agent.evaluation.report import calibrate_split

    rng = np.random.default_rng(1)
    # Half say 0.95 and are always right; half say 0.6 and are right a coin's worth.
    conf = [0.95 if i % 2 == 0 else 0.6 for i in range(200)]
    right = [i % 2 == 0 or bool(rng.random() < 0.5) for i in range(200)]
    _, held = calibrate_split(_records(conf, right), fit_fraction=0.5, seed=0)
    passed = set(held["crossfit_passed_ids"])
    assert passed == {f"q{i}" for i in range(0, 200, 2)}  # the sure half, and only it
    assert held["crossfit_coverage"] == 0.5 and held["crossfit_selective_accuracy"] == 1.0


def test_self_consistency_is_calibrated_when_items_repeat():
    from agent.evaluation.report import agreement, calibrate_split

    # 100 items x 2 repeats; the items whose two answers agree are the ones answered right.
    n = 100
    right = [i % 2 == 0 for i in range(n)]
    parsed = [("a" if right[i] else "b") for i in range(n)] + ["a"] * n
    recs = _records([0.8] * (2 * n), right + right, repeats=2, parsed=parsed)
    agree = agreement(recs)
    assert agree[0] == 1.0 and agree[1] == 0.5  # q1: "b" then "a"
    _, held = calibrate_split(recs, fit_fraction=0.5, seed=0)
    assert held["crossfit_ece_after_with_agreement"] <= held["crossfit_ece_after"] + 1e-9
    assert held["crossfit_aurc_after_with_agreement"] < held["crossfit_aurc_after"]


def _imaged(n: int, domain: str, per_image: int, seed: int, conf: float, acc: float) -> list:
    """``n`` full records of one domain, ``per_image`` items per image, right ~``acc``."""
    from agent.evaluation.runner import Record

    rng = np.random.default_rng(seed)
    return [Record(item_id=f"{domain}{i}", variant="full", repeat=0, question="?",
                   reference="yes", answer_type="yesno", answer="yes", parsed="yes",
                   correct=bool(rng.random() < acc), confidence=conf, raw_confidence=conf,
                   abstained=False, latency_s=1.0, tool_calls=1,
                   item_images=[f"{domain}-img{i // per_image}.jpg"], domain=domain)
            for i in range(n)]


def test_calibration_is_fitted_per_domain_and_split_by_image():
    from agent.evaluation.report import calibrate_by_domain, calibrate_split

    # Phantoms: said 0.9, right 90 %. Clinical images: said 0.9, right 30 %.
    recs = _imaged(120, "phantom", 1, 0, 0.9, 0.9) + _imaged(200, "clinical", 9, 1, 0.9, 0.3)
    fitted = calibrate_by_domain(recs, fit_fraction=0.5, seed=0, folds=5)
    assert list(fitted) == ["clinical", "phantom"]  # the larger domain first
    clinical, held = fitted["clinical"]
    assert clinical.domain == "clinical" and held["domain"] == "clinical"
    assert clinical(0.9) < 0.45 < fitted["phantom"][0](0.9)  # neither learnt from the other
    assert held["split_by"] == "image" and held["crossfit_folds"] == 5
    assert held["n_fit_items"] + held["n_test_items"] == 200
    assert held["crossfit_ece_after"] < held["crossfit_ece_before"]
    for key in ("ece_noise_floor", "brier_after", "aurc_after", "coverage",
                "crossfit_coverage", "crossfit_brier_after", "crossfit_aurc_after"):
        assert key in held
    # no image's items on both sides of the held-out split
    import random

    from agent.evaluation.report import _fit_split

    full = [r for r in recs if r.domain == "clinical"]
    fit_ids = _fit_split(full, 0.5, seed=random.Random(0).randrange(100))
    fit_images = {r.item_images[0] for r in full if r.item_id in fit_ids}
    test_images = {r.item_images[0] for r in full if r.item_id not in fit_ids}
    assert fit_images and test_images and not fit_images & test_images
    # a single image cannot be split into fit and test
    assert calibrate_split(_imaged(9, "clinical", 9, 2, 0.9, 0.5)) is None


def test_the_shipped_clinical_map_is_the_one_its_committed_records_refit():
    """``bench/results/``'s records of the 988-item dev run refit to the map that ships.

    The records (gzipped JSON lines, read as ``--records`` reads them) keep each answer's raw
    confidence: refitting them must give the shipped map's method, points and threshold, so
    the map can be checked and refitted without an hour of planner calls, and a change to the
    fitting code that would move the shipped map shows here.
    """
    from agent.evaluation.report import calibrate_by_domain
    from agent.evaluation.runner import read_records
    from agent.trust.calibration import load_calibration

    root = Path(__file__).resolve().parents[3]
    records = read_records(root / "bench" / "results" / "agent-vqa-rad-dev-988.records.jsonl.gz")
    assert len({r.item_id for r in records}) == 988
    shipped = load_calibration(root / "agent" / "calibration"
                               / "embedded-smollm2-135m.clinical.json")
    refit, held = calibrate_by_domain(records, fit_fraction=0.5, seed=0, target_accuracy=0.9,
                                      folds=5)["clinical"]
    assert shipped is not None and refit.method == shipped.method

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            np.allclose(np.asarray(a[k], float), np.asarray(b[k], float)) for k in a)

    assert same(refit.params, shipped.params)
    assert refit.abstain_below == pytest.approx(shipped.abstain_below)
    assert shipped.by_form.keys() == refit.by_form.keys() == {"closed", "open"}
    for form, m in shipped.by_form.items():
        assert refit.by_form[form].method == m.method and same(refit.by_form[form].params,
                                                                m.params)
    # and the figures the README states of it
    assert held["crossfit_ece_after"] == pytest.approx(0.033, abs=5e-4)
    assert held["crossfit_selective_accuracy"] == pytest.approx(46 / 53, abs=1e-3)
