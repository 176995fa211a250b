"""Building a case library from the VQA-RAD JSON-lines format: items, labels, folds, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrievers.embedders import ThumbnailEmbedder
from retrievers.library import CaseLibrary
from retrievers.vqa_library import (
    QAItem,
    build_vqa_library,
    folds_by_image,
    image_labels,
    is_vqa_items,
    load_qa,
    normalise_answer,
    read_items,
    vqa_items_file,
)
from tools.errors import ToolInputError

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "vqa_rad_mini" / "items.jsonl"


class HashText:
    """A deterministic stand-in text embedder (bag of hashed words), so no model loads."""

    name = "hash-words"
    dim = 64
    identity = {"name": "hash-words", "dim": 64}

    def embed_texts(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in normalise_answer(t).split():
                out[i, sum(map(ord, w)) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_reads_the_fixture() -> None:
    items = read_items(MINI)
    assert len(items) == 108
    assert len({it.image for it in items}) == 12
    assert {it.answer_type for it in items} == {"yesno", "open"}
    assert all(it.image.startswith("images/") for it in items)


def test_recognises_the_format(tmp_path: Path) -> None:
    assert is_vqa_items(MINI)
    assert vqa_items_file(MINI.parent) == MINI and vqa_items_file(MINI) == MINI
    assert vqa_items_file(tmp_path) is None
    other = tmp_path / "cases.jsonl"
    other.write_text(json.dumps({"image": "a.png", "report": "normal"}) + "\n")
    assert not is_vqa_items(other)
    assert not is_vqa_items(tmp_path / "missing.jsonl")


def test_an_item_without_an_answer_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "items.jsonl"
    bad.write_text(json.dumps({"images": ["a.jpg"], "question": "Is it?"}) + "\n")
    with pytest.raises(ToolInputError, match=r"items\.jsonl:1"):
        read_items(bad)


def test_labels_per_image_from_their_own_questions() -> None:
    labels = image_labels(read_items(MINI))
    assert labels["images/synpic53816.jpg"] == {"organ": "head", "modality": "mr",
                                                "plane": "axial"}
    assert labels["images/synpic17693.jpg"] == {"organ": "chest", "modality": "xray",
                                                "plane": "frontal"}
    assert labels["images/synpic33892.jpg"]["modality"] == "ct"
    assert sorted(v["organ"] for v in labels.values()).count("head") == 4


def test_a_question_answered_no_says_nothing() -> None:
    def item(q: str, a: str, kind: str) -> QAItem:
        return QAItem("x", "i.jpg", q, a, kind)

    assert image_labels([item("Is this a CT image?", "no", "yesno")]) == {"i.jpg": {}}
    assert image_labels([item("Is this a CT image?", "yes", "yesno")])["i.jpg"] == {
        "modality": "ct"}
    # "AP or PA" names both: only the answer counts.
    assert image_labels([item("Is this an AP or PA film?", "PA", "open")])["i.jpg"] == {
        "modality": "xray", "plane": "frontal"}
    # a tie is left unknown rather than guessed
    tie = [item("What is it?", "CT", "open"), item("What is it?", "MRI", "open")]
    assert "modality" not in image_labels(tie)["i.jpg"]


def test_folds_split_by_image() -> None:
    items = read_items(MINI)
    folds = folds_by_image([it.image for it in items], 4)
    assert sorted(folds) == sorted({it.image for it in items})
    assert sorted(np.bincount(list(folds.values())).tolist()) == [3, 3, 3, 3]
    assert folds == folds_by_image(list(reversed([it.image for it in items])), 4)


def test_normalised_answers() -> None:
    assert normalise_answer("The  Left Kidney.") == "left kidney"
    assert normalise_answer("MRI - T2 Weighted") == "mri t2 weighted"


def test_builds_a_library_with_its_pairs(tmp_path: Path) -> None:
    lib = build_vqa_library(MINI, tmp_path / "lib", ThumbnailEmbedder(16), HashText())
    try:
        assert len(lib) == 12
        hits = lib.search_image(vector=lib.image_index.reconstruct([0]), k=1)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert any(lab.startswith("organ:") for lab in hits[0].labels)
        assert lib.db.filter_ids(modality="MR") is not None
    finally:
        lib.close()
    qa = load_qa(tmp_path / "lib")
    assert len(qa.items) == 108 and qa.vectors.shape == (108, 64)
    assert qa.embedder == {"name": "hash-words", "dim": 64}
    assert sum(len(v) for v in qa.by_case().values()) == 108
    reopened = CaseLibrary.open(tmp_path / "lib", image_embedder=ThumbnailEmbedder(16))
    try:
        assert {r.modality for r in reopened.db.get(list(range(12))).values()} >= {"MR", "CR"}
    finally:
        reopened.close()


def test_builds_only_the_images_asked_for(tmp_path: Path) -> None:
    lib = build_vqa_library(MINI, tmp_path / "lib", ThumbnailEmbedder(16), HashText(),
                            images=["images/synpic53816.jpg", "images/synpic17693.jpg"])
    lib.close()
    assert len(load_qa(tmp_path / "lib").items) == 12 + 9
