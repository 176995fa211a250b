"""Case-based answering: neighbours' answers and their agreement, and the ``case_answer`` tool."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.trust.agreement import declines
from retrievers import answer_model
from retrievers.answer_model import fit_answer_model
from retrievers.case_answers import (
    CaseBank,
    answer_from_cases,
    case_answer_tools,
    is_yesno_question,
    token_recall,
    yesno_from_library,
)
from retrievers.embedders import shared_minilm
from retrievers.heads import fit_head, train_and_save
from retrievers.vqa_library import (
    QAItem,
    build_vqa_library,
    folds_by_image,
    label_question,
    load_display,
    normalise_answer,
    read_items,
)
from tests.retrievers.test_vqa_library import MINI, HashText
from tools.errors import ToolInputError
from tools.ingest import ingest_path
from tools.ingest.loader import load_image
from tools.store import ImageStore


def _bank(centred: bool = False) -> tuple[CaseBank, HashText]:
    """Three 'CT' images near +x, one 'MR' image near +y, each asked the modality."""
    text = HashText()
    images = ["ct1", "ct2", "ct3", "mr1"]
    vecs = np.array([[1, 0.1, 0], [1, 0, 0.1], [1, 0.05, 0.05], [0, 1, 0]], np.float32)
    items = [QAItem(f"q{i}", im, "What modality is this?", "CT" if im.startswith("ct") else "MRI",
                    "open") for i, im in enumerate(images)]
    items.append(QAItem("y1", "ct1", "Is there a mass?", "yes", "yesno"))
    items.append(QAItem("y2", "ct2", "Is there a mass?", "no", "yesno"))
    qv = text.embed_texts([it.question for it in items])
    return CaseBank.from_arrays(images, vecs, items, qv, centred=centred), text


def test_neighbours_answer_with_their_agreement() -> None:
    bank, text = _bank()
    q = "What modality is this?"
    res = answer_from_cases(bank, np.array([1, 0.02, 0.02]), text.embed_texts([q])[0], q,
                            k_images=4)
    assert res is not None and normalise_answer(res.answer) == "ct"
    assert res.shares[0][0] == "ct" and 0.9 < res.agreement < 1.0  # the MR image is far
    assert res.score == pytest.approx(res.agreement * 4 / 5)
    assert {v.case_id for v in res.votes} == {"ct1", "ct2", "ct3", "mr1"}


def test_only_the_nearest_images_vote() -> None:
    bank, text = _bank()
    q = "What modality is this?"
    res = answer_from_cases(bank, np.array([0, 1, 0]), text.embed_texts([q])[0], q, k_images=1)
    assert res is not None and res.answer == "MRI" and res.agreement == 1.0
    assert res.score == pytest.approx(0.5)  # one neighbour agreeing with itself


def test_yes_no_questions_take_only_yes_no_answers_and_split() -> None:
    bank, text = _bank()
    q = "Is there a mass?"
    res = answer_from_cases(bank, np.array([1, 0.05, 0.05]), text.embed_texts([q])[0], q)
    assert res is not None and {normalise_answer(v.answer) for v in res.votes} == {"yes", "no"}
    assert res.agreement < 0.6


def test_no_similar_question_no_answer() -> None:
    bank, text = _bank()
    q = "How large is the liver lesion?"
    assert answer_from_cases(bank, np.array([1, 0, 0]), text.embed_texts([q])[0], q) is None


def test_centring_removes_the_shared_component() -> None:
    bank, _ = _bank(centred=True)
    assert bank.mean is not None
    sims = bank.image_vectors @ bank.query(np.array([1, 0.05, 0.05]))
    assert sims[3] < 0 < sims[2]  # the MR image is now on the other side


def test_question_kinds_and_token_recall() -> None:
    assert is_yesno_question("Is there a mass?") and is_yesno_question("does it enhance")
    assert not is_yesno_question("What plane is this?")
    assert not is_yesno_question("Is this an AP or PA film?")
    assert token_recall("MRI T2 weighted", "T2 weighted") == 1.0
    assert token_recall("CT", "MRI") == 0.0


def _fold_accuracy(items: list[QAItem], x: np.ndarray, images: list[str],
                   qv: np.ndarray) -> tuple[int, int, int]:
    """(right, majority right, n) on modality/organ/plane questions over 4 folds by image."""
    folds = folds_by_image(images, 4)
    row = {im: i for i, im in enumerate(images)}
    right = majority = n = 0
    for f in range(4):
        fit_imgs = [im for im in images if folds[im] != f]
        fit = [i for i, it in enumerate(items) if folds[it.image] != f]
        bank = CaseBank.from_arrays(fit_imgs, x[[row[im] for im in fit_imgs]],
                                    [items[i] for i in fit], qv[fit])
        base: dict[tuple[str | None, str], Counter[str]] = {}
        for i in fit:
            base.setdefault((items[i].category, items[i].answer_type), Counter())[
                normalise_answer(items[i].answer)] += 1
        for i, it in enumerate(items):
            if folds[it.image] != f or it.category not in ("MODALITY", "ORGAN", "PLANE"):
                continue
            counts = base.get((it.category, it.answer_type))
            guess = counts.most_common(1)[0][0] if counts else ""
            res = answer_from_cases(bank, x[row[it.image]], qv[i], it.question)
            said = normalise_answer(res.answer) if res is not None else guess
            right += said == normalise_answer(it.answer)
            majority += guess == normalise_answer(it.answer)
            n += 1
    return right, majority, n


@pytest.mark.slow
def test_neighbours_beat_the_majority_on_held_out_images(mini_embedder) -> None:
    """Modality / organ / plane questions about held-out fixture images (4 folds by image).

    The majority answer per (category, answer type) comes from the fitting folds; abstentions
    fall back to it, so only what the neighbours say can make the difference.
    """
    items = read_items(MINI)
    images = sorted({it.image for it in items})
    x = mini_embedder.embed_images(
        [load_display(MINI.parent / im) for im in images])
    qv = shared_minilm().embed_texts([it.question for it in items])
    right, majority, n = _fold_accuracy(items, x, images, qv)
    assert n >= 20
    assert right > majority, (right, majority, n)


@pytest.mark.slow
def test_the_tool_answers_from_a_built_library(tmp_path: Path, store, mini_embedder) -> None:
    lib = build_vqa_library(MINI, tmp_path / "lib", mini_embedder, HashText())
    try:
        _, refs = ingest_path(store, MINI.parent / "images" / "synpic33892.jpg")
        tool = case_answer_tools(store, lambda: lib, text_embedder=HashText)[0]
        ev = tool.invoke({"image_id": refs[0].id, "question": "What image modality is this?"})
        assert ev.tool == "case_answer" and ev.data["answer"] is not None
        assert ev.data["votes"][0]["case_id"] == "images/synpic33892.jpg"  # itself, first
        assert 0.0 < ev.score <= 1.0 and "agreement" in ev.summary
        none = tool.invoke({"image_id": refs[0].id, "question": "zebra quantum teapot?"})
        assert none.data["answer"] is None and none.score == 0.0
        # it says which question it had no answer to: the answer node's decline
        assert none.data["question"] == "zebra quantum teapot?" and declines(none)
        with pytest.raises(ToolInputError, match="empty"):
            tool.invoke({"image_id": refs[0].id, "question": "  "})
    finally:
        lib.close()


@pytest.mark.parametrize(("question", "asked"), [
    ("Is this an MRI?", ("modality", "mr")),
    ("Is this a CT scan?", ("modality", "ct")),
    ("Is this a chest radiograph?", ("modality", "xray")),
    ("Is the image in the axial plane?", ("plane", "axial")),
    ("Is this a transverse section?", ("plane", "axial")),
    ("Is this CT scan enhanced by IV contrast?", None),  # asks about contrast
    ("Is this a T2 weighted image?", None),  # a weighting, not the modality
    ("Is this an AP or PA film?", None),
    ("Is there a mass in the CT?", None),  # not about what the image is
    ("Is this a lateral film?", ("plane", "lateral")),  # a film's plane: the film is implied
    ("Is this a lateral CT?", None),  # names a plane and a modality
    ("Is this image of a saggital plane?", ("plane", "sagittal")),
    ("Is this the brain?", ("organ", "head")),  # a body region and nothing else
    ("Is this an image of the chest?", ("organ", "chest")),
    ("Is this the brain stem?", None),  # a structure, not the region
    ("Is this the liver?", None),
    ("Is this a chest radiograph?", ("modality", "xray")),  # the region is context
    ("Is this a normal CT?", None),  # asks about the findings: the modality head said "yes"
    ("Is this an abnormal chest x-ray?", None),
    ("Is this a healthy MRI?", None),
])
def test_which_yes_no_questions_a_label_answers(question, asked) -> None:
    assert label_question(question) == asked


def test_yes_no_from_the_heads_or_the_answer_model() -> None:
    text = HashText()
    x = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0]] * 3, np.float64)
    head = fit_head(x, ["ct", "ct", "mr", "mr"] * 3, "modality", "pixels")
    mr_image = np.array([0.05, 1.0, 0.0])
    qv = text.embed_texts(["Is this a CT scan?"])[0]
    yn = yesno_from_library("Is this a CT scan?", qv, mr_image, "pixels", {"modality": head},
                            None)
    assert yn is not None and yn.answer == "no" and yn.method == "head:modality"
    assert yn.p_yes < 0.5 and "modality classifier" in yn.summary
    # the image's DICOM header says CT: it goes before the head, which reads an MR
    yn = yesno_from_library("Is this a CT scan?", qv, mr_image, "pixels", {"modality": head},
                            None, {"modality": "ct"})
    assert yn is not None and (yn.answer, yn.p_yes, yn.method) == ("yes", 1.0, "head:modality")
    assert "DICOM header gives modality ct" in yn.summary
    yn = yesno_from_library("Is this a CT scan?", qv, mr_image, "pixels", {"modality": head},
                            None, {"modality": "us"})
    assert yn is not None and (yn.answer, yn.p_yes) == ("no", 0.0)
    # not a label question and no answer model: nothing to say
    assert yesno_from_library("Is there a mass?", qv, mr_image, "pixels", {"modality": head},
                              None) is None
    rng = np.random.default_rng(0)
    qs = rng.normal(size=(60, qv.shape[0]))
    model = fit_answer_model(qs, rng.normal(size=(60, 3)), ["yes", "no"] * 30, "w", "pixels")
    yn = yesno_from_library("Is there a mass?", qv, mr_image, "pixels", {}, model)
    assert yn is not None and yn.method == "answer-model" and yn.answer in ("yes", "no")
    assert (yn.answer == "yes") == (yn.p_yes >= 0.5) and "cannot see a finding" in yn.summary


@pytest.mark.slow
def test_the_tool_answers_yes_no_from_the_trained_library(tmp_path: Path, store,
                                                           mini_embedder) -> None:
    lib = build_vqa_library(MINI, tmp_path / "lib", mini_embedder, HashText())
    try:
        train_and_save(lib)
        assert answer_model.train_and_save(lib) is not None
        _, refs = ingest_path(store, MINI.parent / "images" / "synpic33892.jpg")
        tool = case_answer_tools(store, lambda: lib, text_embedder=HashText)[0]
        ev = tool.invoke({"image_id": refs[0].id, "question": "Is there a fracture?"})
        assert ev.data["method"] == "answer-model" and ev.data["answer"] in ("yes", "no")
        assert ev.score == pytest.approx(max(ev.data["p_yes"], 1 - ev.data["p_yes"]), abs=1e-4)
        assert "cannot see a finding" in ev.summary
        # an open question about what the image is: the head's class, in the library's words
        ev = tool.invoke({"image_id": refs[0].id, "question": "What plane is this image in?"})
        assert ev.data["method"] == "head:plane" and ev.data["label"] in ("axial", "frontal")
        assert ev.data["answer"] == ev.data["label_answer"] and ev.data["question"]
        assert "plane classifier" in ev.summary and 0.0 < ev.score <= ev.data["p_label"]
    finally:
        lib.close()


@pytest.mark.slow
def test_the_tool_withholds_an_answer_of_a_kind_the_cases_cannot_answer(tmp_path: Path, store,
                                                                        mini_embedder) -> None:
    """The measured table decides; the withheld answer stays in data, not in the summary."""
    from retrievers import reliability
    from retrievers.question_kinds import (
        KindScore,
        Reliability,
        kind_key,
        load_reliability,
        save_reliability,
    )

    lib = build_vqa_library(MINI, tmp_path / "lib", mini_embedder, HashText())
    try:
        train_and_save(lib)
        answer_model.train_and_save(lib)
        summary = reliability.train_and_save(lib)
        assert summary is not None and load_reliability(lib.root) is not None
        kinds = {kind_key(it.category, it.answer_type == "yesno") for it in read_items(MINI)}
        assert set(summary["withheld"]) | set(summary["answered"]) <= kinds
        _, refs = ingest_path(store, MINI.parent / "images" / "synpic33892.jpg")
        tool = case_answer_tools(store, lambda: lib, text_embedder=HashText)[0]
        ask = {"image_id": refs[0].id, "question": "Is there a fracture?"}

        def table(reliable: bool) -> None:
            right, major, won, lost = (10, 4, 6, 0) if reliable else (3, 6, 1, 4)
            save_reliability(lib.root, Reliability(
                {k: KindScore(k, 12, 10, right, major, "no", won, lost) for k in kinds if k},
                5, 0))

        table(reliable=False)
        ev = tool.invoke(ask)
        assert ev.data["answer"] is None and "yes_no" not in ev.data and ev.score == 0.0
        assert ev.data["withheld"] in ("yes", "no") and ev.data["kind"] in kinds
        assert ev.summary.startswith("No answer") and "30%" in ev.summary
        assert "Answer: yes" not in ev.summary and "Answer: no" not in ev.summary
        # a yes/no question about what the image is: the head answers, whatever the table
        ev = tool.invoke(ask | {"question": "Is the image in the axial plane?"})
        assert ev.data["method"] == "head:plane" and ev.data["yes_no"] in ("yes", "no")
        assert "withheld" not in ev.data and ev.score >= 0.5
        # "Describe this image": every head at once, a question no kind of the table measures
        ev = tool.invoke(ask | {"question": "Describe this image"})
        assert ev.data["method"] == "head:describe" and "withheld" not in ev.data
        assert ev.data["answer"] == ev.data["label_answer"] and ev.score > 0.0
        assert "not what it shows" in ev.summary
        # a choice among the head's own classes, answered in the offered words
        ev = tool.invoke(ask | {"question": "Is this a CT or an MRI?"})
        assert ev.data["method"] == "head:choice" and "withheld" not in ev.data
        assert ev.data["answer"] in ("CT", "MRI", "X-ray") and ev.score > 0.0
        # an open plane question: the head's reading is judged by the table and withheld...
        ev = tool.invoke(ask | {"question": "In what plane is this image?"})
        assert ev.data["answer"] is None and ev.data["withheld"]
        # ... but a plane the image's DICOM header gives is not the cases' answer: it stands
        img = load_image(MINI.parent / "images" / "synpic33892.jpg")
        dicom = ImageStore(tmp_path / "dicom")
        ref = dicom.put(replace(img, source_format="dicom", meta=img.meta | {
            "modality": "CT", "orientation": [1, 0, 0, 0, 0, -1]}))
        header_tool = case_answer_tools(dicom, lambda: lib, text_embedder=HashText)[0]
        ev = header_tool.invoke({"image_id": ref.id, "question": "In what plane is this image?"})
        assert ev.data["method"] == "head:plane" and ev.data["label"] == "coronal"
        assert "withheld" not in ev.data and ev.data["answer"] and ev.score > 0.0
        assert "DICOM header gives coronal" in ev.summary
        table(reliable=True)
        ev = tool.invoke(ask)
        assert ev.data["yes_no"] in ("yes", "no") and "withheld" not in ev.data
    finally:
        lib.close()
