"""Trained heads: calibrated logistic regression on frozen embeddings, saved with a library."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from retrievers.case_answers import yesno_from_library
from retrievers.heads import (
    fit_head,
    head_classify_tools,
    joint_plane,
    load_heads,
    predict_heads,
    save_heads,
    train_heads,
)
from retrievers.vqa_library import (
    build_vqa_library,
    folds_by_image,
    image_labels,
    load_display,
    read_items,
)
from tests.retrievers.test_vqa_library import MINI, HashText
from tools.errors import ToolInputError
from tools.ingest import ingest_path


def _blobs(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 2
    y = rng.integers(0, 3, n)
    return centres[y] + rng.normal(size=(n, 16)), [("ct", "mr", "xray")[i] for i in y]


def test_a_head_learns_and_its_probabilities_sum_to_one() -> None:
    x, y = _blobs(120)
    head = fit_head(x[:90], y[:90], task="modality", embedder="e")
    p = head.predict_proba(x[90:])
    assert p.shape == (30, 3)
    assert p.sum(axis=1) == pytest.approx(np.ones(30))
    acc = np.mean([head.classes[i] == t for i, t in zip(p.argmax(axis=1), y[90:], strict=True)])
    assert acc >= 0.9
    assert head.temperature > 0 and head.fitted_on == dict(Counter(y[:90]))


def test_calibration_tempers_an_overconfident_fit() -> None:
    # Labels that are half noise: a raw fit is near-certain on its training cases; the
    # out-of-fold temperature must pull the mean top probability towards the true accuracy.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 40))
    y = ["a" if (v > 0) ^ (rng.random() < 0.35) else "b" for v in x[:, 0]]
    raw = fit_head(x, y, calibrate=False)
    cal = fit_head(x, y)
    xt = rng.normal(size=(200, 40))
    assert cal.predict_proba(xt).max(axis=1).mean() < raw.predict_proba(xt).max(axis=1).mean()
    assert cal.temperature > 1.0


def test_no_head_is_surer_than_its_fitting_cases_allow() -> None:
    # far-apart clusters: every out-of-fold prediction right, the sharpest temperature tried
    x, y = _blobs(40)
    x = x * 50
    head = fit_head(x, y)
    assert head.temperature == pytest.approx(0.05)
    p = head.predict_proba(x * 10)  # further out still: the softmax alone says 1.0
    assert p.sum(axis=1) == pytest.approx(np.ones(40))
    assert head.doubt == pytest.approx(1 / 42)
    assert p.max() == pytest.approx(1 - head.doubt * 2 / 3) == pytest.approx(1 - 2 / 126)
    assert p.min() == pytest.approx(head.doubt / 3)
    assert (p.argmax(axis=1) == [head.classes.index(v) for v in y]).all()  # order kept


def test_two_classes_and_one_class() -> None:
    x, y = _blobs(60)
    two = [("ct" if v == "ct" else "other") for v in y]
    head = fit_head(x, two)
    assert head.classes == ["ct", "other"] and head.weights.shape == (2, 16)
    with pytest.raises(ToolInputError, match="two classes"):
        fit_head(x, ["ct"] * len(y))


def test_save_load_and_embedder_check(tmp_path: Path) -> None:
    x, y = _blobs(60)
    heads = {"modality": fit_head(x, y, task="modality", embedder="e")}
    save_heads(tmp_path, heads)
    back = load_heads(tmp_path)
    assert back["modality"].predict_proba(x[:5]) == pytest.approx(
        heads["modality"].predict_proba(x[:5]))
    assert predict_heads(back, x[0], "e")["modality"][0][1] > 0.3
    with pytest.raises(ToolInputError, match="retrain"):
        predict_heads(back, x[0], "other-embedder")
    assert load_heads(tmp_path / "none") == {}


@pytest.mark.slow
def test_heads_beat_the_majority_on_held_out_images(mini_embedder) -> None:
    """Organ, modality and plane of held-out fixture images, 4 folds by image."""
    items = read_items(MINI)
    labels = image_labels(items)
    images = sorted(labels)
    x = mini_embedder.embed_images([load_display(MINI.parent / im) for im in images])
    folds = folds_by_image(images, 4)
    right = majority = n = 0
    for task in ("organ", "modality", "plane"):
        for f in range(4):
            fit = [i for i, im in enumerate(images) if folds[im] != f and task in labels[im]]
            test = [i for i, im in enumerate(images) if folds[im] == f and task in labels[im]]
            y = [labels[images[i]][task] for i in fit]
            if not test or len(set(y)) < 2:
                continue
            head = fit_head(x[fit], y, task)
            base = Counter(y).most_common(1)[0][0]
            for i, p in zip(test, head.predict_proba(x[test]), strict=True):
                truth = labels[images[i]][task]
                right += head.classes[int(p.argmax())] == truth
                majority += base == truth
                n += 1
    assert n >= 15
    assert right > majority
    assert right / n >= 0.7


def _film_and_section_heads() -> tuple[dict, np.ndarray, np.ndarray]:
    """Heads whose plane head leans "axial" on a film: as fitted on the dev set's 21 planes.

    The modality head tells the film (first axis) from the CT (second axis); the plane head
    saw mostly sections and leans axial on both.
    """
    x = np.array([[2.0, 0.0], [2.2, 0.1], [1.8, -0.1], [0.0, 2.0], [0.1, 2.2], [-0.1, 1.8]])
    modality = fit_head(x, ["xray"] * 3 + ["ct"] * 3, "modality", "e")
    px = np.array([[0.0, 2.0], [0.1, 2.2], [-0.1, 1.8], [0.0, -2.0], [2.0, 1.0], [-2.0, 1.0]])
    plane = fit_head(px, ["axial"] * 3 + ["frontal", "axial", "axial"], "plane", "e")
    film, section = np.array([2.0, 0.3]), np.array([0.0, 2.0])
    return {"modality": modality, "plane": plane}, film, section


def test_a_plane_is_read_with_the_modality() -> None:
    heads, film, section = _film_and_section_heads()
    alone = predict_heads({"plane": heads["plane"]}, film, "e")["plane"]
    assert alone[0][0] == "axial"  # the plane head alone calls the film a section
    assert predict_heads({"modality": heads["modality"]}, film, "e")["modality"][0][0] == "xray"
    joint = predict_heads(heads, film, "e", ["plane"])
    assert list(joint) == ["plane"]  # only the task asked, still read with the modality
    assert joint["plane"][0][0] == "frontal"
    assert predict_heads(heads, section, "e")["plane"][0][0] == "axial"
    # a film asked "is this axial?" is answered from the joint reading, not the plane head's
    got = yesno_from_library("Is this an axial image?", np.zeros(3), film, "e", heads, None)
    assert got is not None and got.answer == "no" and got.method == "head:plane"
    got = yesno_from_library("Is this an axial image?", np.zeros(3), section, "e", heads, None)
    assert got is not None and got.answer == "yes" and "knows axial and frontal only" in (
        got.summary)


def test_a_class_the_head_never_saw_is_ruled_out_by_the_modality_or_not_answered() -> None:
    heads, film, section = _film_and_section_heads()
    # a film has no sagittal plane, a CT no lateral one: "no", at the modality's probability
    for image, question, modality in ((film, "Is this a sagittal section?", "xray"),
                                      (section, "Is this a lateral film?", "ct")):
        got = yesno_from_library(question, np.zeros(3), image, "e", heads, None)
        p = dict(predict_heads(heads, image, "e")["modality"])[modality]
        assert got is not None and (got.answer, got.method) == ("no", "head:modality")
        assert got.p_yes == pytest.approx(1.0 - p) and f"gives {modality} " in got.summary
    # a section asked whether it is sagittal: the plane head (axial, frontal) cannot tell, so
    # no answer, said why; not the answer model's guess from the wording
    model = object()  # never asked: it would fail if called
    got = yesno_from_library("Is this a sagittal section?", np.zeros(3), section, "e", heads,
                             model)  # type: ignore[arg-type]
    assert got is not None and got.answer == "" and got.method == "head:plane"
    assert "never shown sagittal images" in got.summary
    # the same for a modality the head never saw
    got = yesno_from_library("Is this an ultrasound?", np.zeros(3), section, "e", heads, model)
    assert got is not None and got.answer == "" and got.method == "head:modality"
    assert "knows ct, xray only and was never shown ultrasound images" in got.summary
    # the header's plane, when there is one, answers it
    got = yesno_from_library("Is this a sagittal section?", np.zeros(3), section, "e", heads,
                             None, {"modality": "mr", "plane": "sagittal"})
    assert got is not None and got.answer == "yes" and "DICOM header" in got.summary


def test_joint_plane_arithmetic() -> None:
    plane = [("axial", 0.6), ("frontal", 0.3), ("lateral", 0.1)]
    got = dict(joint_plane(plane, [("xray", 0.8), ("ct", 0.2)]))
    # films: frontal 0.3 / 0.4 and lateral 0.1 / 0.4 of 0.8; sections: all axial's 0.2
    assert got == pytest.approx({"frontal": 0.6, "lateral": 0.2, "axial": 0.2})
    # a modality whose planes the head has none of adds nothing: its share stays unnamed
    got = dict(joint_plane([("axial", 0.7), ("coronal", 0.3)], [("xray", 0.9), ("mr", 0.1)]))
    assert got == pytest.approx({"axial": 0.07, "coronal": 0.03})
    # a modality the table does not know allows every plane
    assert dict(joint_plane(plane, [("us", 1.0)])) == pytest.approx(dict(plane))


@pytest.mark.slow
def test_train_heads_on_a_library_and_classify(tmp_path: Path, store, mini_embedder) -> None:

    lib = build_vqa_library(MINI, tmp_path / "lib", mini_embedder, HashText())
    try:
        heads = train_heads(lib)
        assert set(heads) >= {"organ", "modality"}
        assert heads["organ"].classes == ["abd", "chest", "head"]
        save_heads(lib.root, heads)
        _, refs = ingest_path(store, MINI.parent / "images" / "synpic53816.jpg")
        tool = head_classify_tools(store, lambda: lib)[0]
        ev = tool.invoke({"image_id": refs[0].id, "task": "organ"})
        assert ev.tool == "classify" and ev.data["method"] == "trained-heads"
        ranked = ev.data["probabilities"]["organ"]
        assert ranked[0][0] == "head"  # an image of the library itself
        assert 0.0 < ev.score <= 1.0 and "organ: head" in ev.summary
        # what it speaks to: the task, its words and its classes (not modality: not asked)
        assert {"organ", "head", "abd", "chest", "brain"} <= set(ev.data["about"])
        assert "axial" not in ev.data["about"]
        assert list(ev.data["fitted_on"]) == ["organ"]  # every head read, the asked one told
        with pytest.raises(ToolInputError, match="no head for task"):
            tool.invoke({"image_id": refs[0].id, "task": "finding"})
        # a DICOM image: what its header says goes before the heads' reading
        _, ct = ingest_path(store, get_testdata_file("CT_small.dcm"))
        assert "ct" in heads["modality"].classes
        ev = tool.invoke({"image_id": ct[0].id, "task": "modality"})
        assert ev.data["probabilities"]["modality"] == [["ct", 1.0]]
        assert "modality: ct (DICOM header)" in ev.summary and ev.data["from_header"] == [
            "modality"]
        # a shoulder MR with no BodyPartExamined: its study description names the shoulder,
        # which the organ head (abd, chest, head) knows nothing of (it read "head 0.99")
        _, shoulder = ingest_path(store, get_testdata_file("MR2_UNCR.dcm"))
        ev = tool.invoke({"image_id": shoulder[0].id, "task": "organ"})
        assert ev.data["probabilities"]["organ"] == [["shoulder", 1.0]]
        assert ev.data["from_header"] == ["organ"]
        assert "the classifiers know nothing of organ shoulder" in ev.summary
        # an ultrasound: no head knows one, so none reads its organ
        _, us = ingest_path(store, get_testdata_file("examples_palette.dcm"))
        with pytest.raises(ToolInputError, match=r"modality us.*know nothing of such an image"):
            tool.invoke({"image_id": us[0].id, "task": "organ"})
    finally:
        lib.close()
