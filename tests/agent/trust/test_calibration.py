"""Calibration fitting: it fixes over-confidence, and leaves a calibrated signal alone."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from agent.evaluation.metrics import brier, ece
from agent.trust.calibration import (
    Calibration,
    abstain_threshold,
    fit_calibration,
    load_calibration,
    save_calibration,
)

MINI = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini"


def _sample(n: int, seed: int, overconfidence: float) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities p, outcomes ~ Bernoulli(p), reported as sigmoid(k · logit(p))."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.2, 0.9, n)
    y = (rng.uniform(size=n) < p).astype(float)
    z = np.log(p / (1 - p)) * overconfidence
    return 1 / (1 + np.exp(-z)), y


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic", "auto"])
def test_calibration_lowers_ece_of_an_overconfident_signal(method):
    fit_p, fit_y = _sample(1500, 0, overconfidence=3.0)
    test_p, test_y = _sample(1500, 1, overconfidence=3.0)
    cal = fit_calibration(fit_p, fit_y, method=method)
    before, after = ece(test_p, test_y), ece(cal.apply(test_p), test_y)
    assert before > 0.1
    assert after < 0.05 and after < before / 2
    if method == "temperature":
        assert cal.params["T"] == pytest.approx(3.0, rel=0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_never_raises_ece_of_a_calibrated_signal(seed):
    fit_p, fit_y = _sample(1000, 10 + seed, overconfidence=1.0)
    test_p, test_y = _sample(1000, 20 + seed, overconfidence=1.0)
    cal = fit_calibration(fit_p, fit_y)  # auto: identity competes
    assert ece(cal.apply(test_p), test_y) <= ece(test_p, test_y) + 0.01


def test_isotonic_is_monotone_and_bounded():
    p, y = _sample(400, 3, overconfidence=2.0)
    cal = fit_calibration(p, y, method="isotonic")
    grid = np.linspace(0, 1, 101)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= -1e-12) and out.min() > 0 and out.max() < 1


def test_abstain_threshold_by_hand():
    conf = [0.95, 0.9, 0.8, 0.6, 0.4]
    right = [1, 1, 0, 1, 0]
    # the top two are right (100 %), the top three 67 %, top four 75 %, all 60 %
    assert abstain_threshold(conf, right, 0.9) == 0.9
    assert abstain_threshold(conf, right, 0.75) == 0.6
    assert abstain_threshold(conf, right, 0.6) == 0.4
    assert abstain_threshold([0.5, 0.5], [0, 0], 0.5) is None


def test_save_and_load_round_trip(tmp_path):
    p, y = _sample(300, 4, overconfidence=2.0)
    cal = fit_calibration(p, y, method="platt")
    cal.abstain_below = 0.6
    path = save_calibration(cal, tmp_path / "cal" / "embedded.json")
    back = load_calibration(path)
    assert isinstance(back, Calibration) and back.method == "platt"
    assert back(0.8) == pytest.approx(cal(0.8)) and back.abstain_below == 0.6
    assert load_calibration(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"method": "magic"}')
    with pytest.raises(ValueError, match="unknown calibration method"):
        load_calibration(tmp_path / "bad.json")


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="equally many"):
        fit_calibration([], [])


def test_answer_node_finds_the_calibration_for_its_model(tmp_path, monkeypatch):
    from dataclasses import replace

    from agent.context import AgentContext
    from agent.nodes.answer import calibration_for, calibration_name

    monkeypatch.delenv("MEDLOOP_CALIBRATION", raising=False)
    ctx = AgentContext(llm="openai:qwen@http://localhost:8000/v1", home=tmp_path)
    assert calibration_for(ctx) is None
    name = calibration_name(ctx.llm)
    assert name == "openai-qwen-http-localhost-8000-v1.json"
    save_calibration(Calibration("temperature", {"T": 2.0}), tmp_path / "calibration" / name)
    cal = calibration_for(ctx)
    assert cal is not None and cal(0.9) == pytest.approx(0.75, abs=0.01)
    assert calibration_for(replace(ctx, calibration="none")) is None  # --raw
    monkeypatch.setenv("MEDLOOP_CALIBRATION", "none")
    assert calibration_for(AgentContext.from_env(llm=ctx.llm, home=tmp_path)) is None
    other = tmp_path / "other.json"
    save_calibration(Calibration("temperature", {"T": 1.0}), other)
    assert calibration_for(replace(ctx, calibration=str(other)))(0.9) == pytest.approx(0.9)
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        calibration_for(replace(ctx, calibration=str(tmp_path / "missing.json")))


def test_answer_checks_feed_the_confidence():
    from agent.trust.confidence import answer_form_score, combine_confidence, evidence_consistency

    ev = ["1 focal lesion found: L1 in the lower left of the image (patient's right side), "
          "9.8 mm diameter."]
    assert evidence_consistency("The lesion is on the patient's right side.", ev) == 0.85
    assert evidence_consistency("The lesion is on the patient's left side.", ev) == 0.15
    assert evidence_consistency("It is 12 mm across.", ev) == 0.15  # 12 is not in E1
    assert evidence_consistency("One lesion, 9.8 mm (E1).", ev) == 0.85
    assert evidence_consistency("Yes, there is a lesion.", ev) is None
    q = "What is the diameter of the largest lesion in mm?"
    assert answer_form_score(q, "The largest lesion is in the lower left.") == 0.15
    assert answer_form_score(q, "It is 9.8 mm.") == 0.8
    assert answer_form_score("Is the lesion on the patient's left or right side?", "Left.") == 0.8
    assert answer_form_score("Describe the image.", "A CT.") is None
    assert answer_form_score("Is there a pneumothorax?", "A CT.") == 0.15
    # a choice is answered by what it offers, not by a yes or no (the shared question form)
    assert answer_form_score("Is this a CT or an MRI?", "CT") is None
    assert answer_form_score("Can you name the organ captured by this image?", "Brain") is None
    assert combine_confidence(0.8, [0.95, 0.15]) < combine_confidence(0.8, [0.95, 0.85])


def test_isotonic_with_ties_has_one_value_per_knot():
    p = [0.6, 0.6, 0.8, 0.8, 0.8, 0.8, 0.9]
    y = [0, 0, 1, 1, 1, 0, 1]
    cal = fit_calibration(p, y, method="isotonic")
    xs = cal.params["x"]
    assert list(xs) == sorted(set(xs))
    assert np.all(np.diff(cal.params["y"]) >= 0)
    assert cal(0.6) < 0.3 < cal(0.8) <= cal(0.9)


def test_images_are_told_apart_by_domain():
    from agent.evaluation import load_suite
    from agent.evaluation.runner import variant_images
    from agent.trust.calibration import domain_of, image_domain
    from tools.image import ImageRef
    from tools.ingest.loader import load_image

    phantoms = load_suite("phantoms:2")
    ph = phantoms[0].images[0]
    assert image_domain(ph.source_format, ph.meta) == "phantom"
    blank = variant_images(phantoms, "blank")[0][0]  # the blank baseline keeps the marks
    assert domain_of([blank]) == "phantom"
    real = load_image(str(MINI / "images" / "synpic17145.jpg"))
    assert domain_of([real]) == "clinical"
    assert domain_of([ph, real]) == "clinical"  # any clinical image: clinical
    assert domain_of([]) == "clinical"  # no image: the safe side
    assert domain_of([ImageRef(id="img-1", source_format="phantom")]) == "phantom"


def test_a_phantom_map_is_never_applied_to_a_clinical_image(tmp_path, monkeypatch):
    from dataclasses import replace

    from agent.context import AgentContext
    from agent.nodes.answer import calibration_for, calibration_name

    monkeypatch.delenv("MEDLOOP_CALIBRATION", raising=False)
    ctx = AgentContext(llm="embedded", home=tmp_path)
    # the default planner ships a map per domain, each fitted on its own domain's runs
    ships = calibration_for(ctx, "phantom")
    assert ships is not None and ships.domain == "phantom" and ships.n_fit >= 100
    assert {m.domain for m in ships.by_form.values()} <= {"phantom"}
    assert calibration_for(AgentContext(llm="embedded:qwen2.5-1.5b", home=tmp_path),
                           "phantom") is None  # fitted for SmolLM2, not another planner
    folder = tmp_path / "calibration"
    # A map saved before domains were recorded was fitted on phantoms: it says so when read.
    folder.mkdir()
    old = folder / calibration_name("embedded")  # embedded-smollm2-135m.json
    old.write_text('{"method": "temperature", "params": {"T": 2.0}}')
    assert load_calibration(old).domain == "phantom"
    assert calibration_for(ctx, "phantom").params == {"T": 2.0}
    shipped = calibration_for(ctx, "clinical")  # the shipped real-image map, not the old one
    assert shipped is not None and shipped.domain == "clinical" and shipped.n_fit >= 300
    assert {m.domain for m in shipped.by_form.values()} == {"clinical"}
    # a map fitted on real images is looked up by its domain's own name
    assert calibration_name("embedded", 0, "clinical") == "embedded-smollm2-135m.clinical.json"
    assert calibration_name("embedded", 3, "clinical") == (
        "embedded-smollm2-135m-sc3.clinical.json")
    save_calibration(Calibration("platt", {"a": 1.0, "b": -1.0}, domain="clinical"),
                     folder / calibration_name("embedded", 0, "clinical"))
    assert calibration_for(ctx, "clinical").method == "platt"
    assert calibration_for(ctx, "phantom").method == "temperature"
    # even a map named explicitly is not applied outside its domain
    named = save_calibration(Calibration("temperature", {"T": 3.0}), tmp_path / "ph.json")
    explicit = replace(ctx, calibration=str(named))
    assert calibration_for(explicit, "clinical") is None
    assert calibration_for(explicit, "phantom").params == {"T": 3.0}
    back = load_calibration(folder / calibration_name("embedded", 0, "clinical"))
    assert back.domain == "clinical"


def test_question_forms():
    from agent.trust.calibration import question_form

    assert question_form("Is the heart enlarged?") == "closed"
    assert question_form("  does this show a fracture") == "closed"
    assert question_form("Is this an MRI or a CT?") == "closed"
    assert question_form("What organ is shown?") == "open"
    assert question_form("Where is the mass?") == "open"
    assert question_form("") == "open"


def _two_forms(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Closed answers right 60 % of the time, open ones 5 %, at the same raw confidences."""
    rng = np.random.default_rng(seed)
    forms = ["closed" if i % 2 else "open" for i in range(n)]
    p = rng.uniform(0.6, 0.9, n)
    rate = np.where(np.asarray(forms) == "closed", 0.6, 0.05)
    return p, (rng.uniform(size=n) < rate).astype(float), forms


def test_a_map_per_question_form_beats_one_pooled_map():
    fit_p, fit_y, fit_f = _two_forms(2000, 0)
    test_p, test_y, test_f = _two_forms(2000, 1)
    pooled = fit_calibration(fit_p, fit_y, method="platt")
    split = fit_calibration(fit_p, fit_y, method="platt", forms=fit_f)
    assert set(split.by_form) == {"closed", "open"} and not pooled.by_form
    assert split.for_form("open")(0.8) < 0.15 < 0.45 < split.for_form("closed")(0.8)
    # one pooled map is right on average and wrong on every closed and every open answer
    closed = np.asarray(test_f) == "closed"
    both = split.apply_forms(test_p, test_f)
    one = pooled.apply(test_p)
    for mask in (closed, ~closed):
        assert ece(both[mask], test_y[mask]) < 0.08 < 0.2 < ece(one[mask], test_y[mask])
    assert brier(both, test_y) < brier(one, test_y) - 0.03
    # a form with too few items, or an unknown one, is calibrated by the pooled map
    few = fit_calibration(fit_p[:40], fit_y[:40], method="platt", forms=fit_f[:40])
    assert not few.by_form and few.for_form("closed") is few
    with pytest.raises(ValueError, match="one question form per confidence"):
        fit_calibration(fit_p, fit_y, forms=fit_f[:3])


def test_maps_per_form_survive_a_round_trip(tmp_path):
    p, y, f = _two_forms(200, 2)
    cal = fit_calibration(p, y, method="platt", forms=f)
    back = load_calibration(save_calibration(cal, tmp_path / "c.json"))
    assert back is not None and set(back.by_form) == {"closed", "open"}
    assert back.for_form("open")(0.7) == pytest.approx(cal.for_form("open")(0.7))
    # a form's map is of its parent's domain, whatever an older file says
    cal.domain = "clinical"
    cal.by_form["open"].domain = "phantom"
    back = load_calibration(save_calibration(cal, tmp_path / "c.json"))
    assert back is not None and {m.domain for m in back.by_form.values()} == {"clinical"}
    (tmp_path / "bad.json").write_text('{"method": "platt", "params": {"a": 1, "b": 0}, '
                                       '"by_form": {"open": {"method": "magic"}}}')
    with pytest.raises(ValueError, match="unknown calibration method 'magic'"):
        load_calibration(tmp_path / "bad.json")


def test_auto_leaves_the_isotonic_map_to_large_fits():
    from agent.trust.calibration import ISOTONIC_MIN_ITEMS

    rng = np.random.default_rng(5)
    p = rng.uniform(0.05, 0.95, 1000)
    y = (rng.uniform(size=p.size) < np.where(p > 0.6, 0.95, 0.05)).astype(float)  # a step
    assert fit_calibration(p, y).method == "isotonic"
    small = fit_calibration(p[:150], y[:150])
    assert ISOTONIC_MIN_ITEMS > 150 and small.method in ("identity", "temperature", "platt")
    assert "cv_log_loss_isotonic" in small.metrics  # measured, not adopted


def test_the_default_planner_ships_a_clinical_map_per_question_form(tmp_path, monkeypatch):
    """Fitted on all 988 real VQA-RAD items answered by the default planner (bench/README.md)."""
    from agent.context import AgentContext
    from agent.nodes.answer import calibration_for

    monkeypatch.delenv("MEDLOOP_CALIBRATION", raising=False)
    ctx = AgentContext(llm="embedded", home=tmp_path)
    cal = calibration_for(ctx, "clinical")
    assert cal is not None and cal.domain == "clinical" and cal.n_fit >= 300
    assert set(cal.by_form) == {"closed", "open"}
    assert calibration_for(ctx, "phantom").domain == "phantom"  # phantoms have their own
    # the abstentions sit at 0.05 raw, none right (475 items); closed answers at 0.832 raw
    # and above were right 32 times of 33, those at 0.5-0.8 221 of 371: the first are let
    # through, the others are "Uncertain"
    assert max(cal.for_form("open")(0.05), cal.for_form("closed")(0.05)) < 0.01
    closed = cal.for_form("closed")
    assert closed(0.85) >= cal.abstain_below > closed(0.8) > closed(0.6)
    for form in ("open", "closed"):  # both maps keep the order of the raw scores
        mapped = [cal.for_form(form)(v) for v in np.linspace(0.05, 0.95, 19)]
        assert all(a <= b for a, b in pairwise(mapped)), form
    other = AgentContext(llm="embedded:qwen2.5-1.5b", home=tmp_path)
    assert calibration_for(other, "clinical") is None  # fitted for one planner only
