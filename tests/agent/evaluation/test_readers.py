"""Suite readers: VQA-RAD, SLAKE, PathVQA, ChestAgentBench, generic JSONL, phantoms."""

from __future__ import annotations

import json

import pytest

from agent.evaluation import load_suite
from agent.evaluation.readers import SuiteError


def test_readers_for_the_common_formats(tmp_path):
    (tmp_path / "imgs" / "xmlab1").mkdir(parents=True)
    (tmp_path / "vqarad.json").write_text(json.dumps([
        {"qid": 7, "image_name": "synpic1.jpg", "question": "Is there a fracture?",
         "answer": "Yes", "answer_type": "CLOSED", "question_type": "PRES"},
        {"qid": 8, "image_name": "synpic1.jpg", "question": "Which organ?", "answer": "liver",
         "answer_type": "OPEN", "question_type": "ORGAN"}]))
    items = load_suite(str(tmp_path / "vqarad.json"))
    assert [(i.id, i.answer_type) for i in items] == [("7", "yesno"), ("8", "open")]
    assert items[0].images[0].endswith("synpic1.jpg")

    (tmp_path / "slake.json").write_text(json.dumps([
        {"qid": 1, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "No",
         "answer_type": "CLOSED", "q_lang": "en"},
        {"qid": 2, "img_name": "xmlab1/source.jpg", "question": "这是CT吗", "answer": "否",
         "q_lang": "zh"}]))
    (sl,) = load_suite(str(tmp_path / "slake.json"))
    assert sl.answer_type == "yesno" and sl.images[0].endswith("imgs/xmlab1/source.jpg")

    (tmp_path / "pathvqa.json").write_text(json.dumps([
        {"image": "train_0001", "question": "what is present?", "answer": "necrosis"}]))
    (pv,) = load_suite(f"pathvqa:{tmp_path / 'pathvqa.json'}")
    assert pv.images[0].endswith("train_0001.jpg") and pv.answer_type == "open"

    (tmp_path / "cab.json").write_text(json.dumps([
        {"case_id": "c1", "images": ["a.png"], "answer": "B",
         "question": "Where is the device? A) left B) right C) midline"}]))
    (mc,) = load_suite(str(tmp_path / "cab.json"))
    assert mc.options == ["left", "right", "midline"] and mc.question == "Where is the device?"
    assert "B) right" in mc.prompt

    (tmp_path / "mine.jsonl").write_text(
        '{"id": "q1", "images": ["x.dcm"], "question": "How many?", "answer": "2", '
        '"answer_type": "count", "boxes": [[1, 2, 3, 4]]}\n')
    (g,) = load_suite(str(tmp_path / "mine.jsonl"))
    assert g.answer_type == "count" and g.boxes == [(1.0, 2.0, 3.0, 4.0)]


def test_bad_suites_are_named(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SuiteError, match=r"bad\.json: not valid JSON"):
        load_suite(str(tmp_path / "bad.json"))
    (tmp_path / "x.jsonl").write_text('{"question": "q", "answer": "a", "answer_type": "poem"}')
    with pytest.raises(SuiteError, match="unknown answer_type 'poem'"):
        load_suite(str(tmp_path / "x.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_suite(str(tmp_path / "missing.json"))
    assert len(load_suite("phantoms:7")) == 7


def test_the_dev_set_format_keeps_organ_and_a_normalised_category(tmp_path):
    from pathlib import Path

    from agent.evaluation.readers import normalise_category

    mini = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"
    items = load_suite(str(mini))
    assert len(items) == 108
    first = items[0]
    assert first.id == "vqa_rad_dev/1196" and first.answer_type == "open"
    assert first.meta["organ"] == "HEAD" and first.meta["category"] == "POS"
    assert first.images[0] == str(mini.parent / "images" / "synpic55317.jpg")  # beside the file
    assert {it.meta["organ"] for it in items} == {"HEAD", "CHEST", "ABD"}

    assert normalise_category("PRES, ATTRIB") == ("PRES", ["PRES", "ATTRIB"])
    assert normalise_category("ATRIB") == ("ATTRIB", ["ATTRIB"])
    assert normalise_category("Other") == ("OTHER", ["OTHER"])
    assert normalise_category(None) == ("", [])
    (tmp_path / "odd.jsonl").write_text(
        '{"id": "a", "images": [], "question": "q", "answer": "yes", "answer_type": "yesno", '
        '"category": "ATTRIB, PRES", "organ": "abd", "meta": {"source": "x"}}\n')
    (odd,) = load_suite(str(tmp_path / "odd.jsonl"))
    assert odd.meta == {"category": "ATTRIB", "categories": ["ATTRIB", "PRES"], "organ": "ABD",
                        "source": "x"}
