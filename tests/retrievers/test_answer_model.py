"""The yes/no answer model: fitted on labelled pairs, calibrated, saved, and refused on too little."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrievers.answer_model import (
    ANSWER_MODEL_FILE,
    fit_answer_model,
    load_answer_model,
    save_answer_model,
)
from tools.errors import ToolInputError


def _pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Questions whose first coordinate says the answer (with 10 % label noise), random images."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 8))
    img = rng.normal(size=(n, 4))
    yes = q[:, 0] > 0
    flip = rng.random(n) < 0.1
    return q, img, ["yes" if (y ^ f) else "no" for y, f in zip(yes, flip, strict=True)]


def test_learns_what_the_question_says_and_stays_calibrated(tmp_path: Path) -> None:
    q, img, y = _pairs(300, 0)
    model = fit_answer_model(q, img, y, "words", "pixels")
    tq, timg, ty = _pairs(400, 1)
    p = np.array([model.p_yes(a, b) for a, b in zip(tq, timg, strict=True)])
    truth = np.array([a == "yes" for a in ty])
    assert ((p >= 0.5) == truth).mean() > 0.8  # 90 % is the ceiling with 10 % noise
    # calibrated: confident answers are right about as often as they claim
    sure = np.maximum(p, 1 - p) > 0.8
    assert sure.sum() > 50
    assert ((p[sure] >= 0.5) == truth[sure]).mean() > 0.8
    path = save_answer_model(tmp_path, model)
    assert path.name == ANSWER_MODEL_FILE
    again = load_answer_model(tmp_path)
    assert again is not None and again.head.classes == ["no", "yes"]
    assert again.p_yes(tq[0], timg[0]) == pytest.approx(p[0], abs=1e-5)
    assert load_answer_model(tmp_path / "none") is None


def test_refuses_too_few_pairs_or_open_answers() -> None:
    q, img, y = _pairs(300, 0)
    with pytest.raises(ToolInputError, match="too few"):
        fit_answer_model(q[:10], img[:10], y[:10])
    with pytest.raises(ToolInputError, match="too few"):
        fit_answer_model(q, img, ["yes"] * 298 + ["no"] * 2)
    with pytest.raises(ToolInputError, match="yes/no"):
        fit_answer_model(q[:3], img[:3], ["yes", "no", "left"])


def test_an_image_at_the_librarys_mean_adds_no_image_evidence(tmp_path: Path) -> None:
    """The blank-image baseline is the library's mean image vector. Centred, it is zero up to
    rounding; normalised, that residual had become an arbitrary unit direction, and the answer
    followed the rounding (the saved mean is rounded to 7 decimals)."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(300, 8))
    img = rng.normal(size=(300, 4))
    # the image decides the answer here, so an arbitrary image direction would move P(yes)
    y = ["yes" if v > 0 else "no" for v in img[:, 0]]
    model = fit_answer_model(q, img, y, "words", "pixels")
    again = load_answer_model(save_answer_model(tmp_path, model).parent)
    assert again is not None
    mean = img.mean(axis=0)
    question_only = float(model.head.predict_proba(
        np.hstack([model.features(q[0], mean)[:, :8], np.zeros((1, 4))]))[0][1])
    for m in (model, again):
        for jitter in (0.0, 1e-7, -3e-7):
            assert m.p_yes(q[0], mean + jitter) == pytest.approx(question_only, abs=1e-6)
    # a real image is still read (a row far from the mean keeps its direction)
    assert abs(model.p_yes(q[0], img[0]) - question_only) > 0.05
