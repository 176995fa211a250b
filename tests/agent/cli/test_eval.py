"""The evaluation harness: readers, grading, baselines, and `medloop eval` end to end."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from agent.cli.main import main
from agent.evaluation import load_suite
from agent.evaluation.readers import SuiteError
from agent.evaluation.runner import variant_images
from agent.evaluation.scoring import grade
from tests.fakes import ScriptedChatModel, ai, call, final


# ------------------------------------------------------------------------------ readers
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


# ------------------------------------------------------------------------------ grading
@pytest.mark.parametrize(
    ("text", "answer", "kind", "ok"),
    [
        ("No focal lesion found: 0 lesions.", "no", "yesno", True),
        ("There is no lesion in this image.", "yes", "yesno", False),
        ("Yes, 1 focal lesion found.", "yes", "yesno", True),
        ("There are two lesions.", "2", "count", True),
        ("Uncertain (confidence 0.29): 3 focal lesions found", "3", "count", True),
        ("The largest lesion is 12.4 mm across.", "13.1", "number", True),
        ("The largest lesion is 9 mm across.", "13.1", "number", False),
        ("L1 in the upper right of the image (patient's left side)", "left", "choice", True),
        ("L1 in the upper right of the image", "upper right", "choice", True),
        ("upper left or lower right", "lower right", "choice", False),
    ],
)
def test_grading(text, answer, kind, ok):
    opts = {"choice": ["upper left", "upper right", "lower left", "lower right"]}.get(kind)
    if answer in ("left", "right"):
        opts = ["left", "right"]
    assert grade(text, answer, kind, options=opts, tolerance=2.0).correct is ok


def test_baseline_variants():
    items = load_suite("phantoms:4")
    blank = variant_images(items, "blank")
    img = blank[0][0]
    assert np.ptp(img.pixels) == 0 and img.spacing_mm == items[0].images[0].spacing_mm
    shuffled = variant_images(items, "shuffled", seed=1)
    own = [it.images[0].content_id() for it in items]
    got = [im[0].content_id() for im in shuffled]
    assert sorted(got) == sorted(own) and all(a != b for a, b in zip(got, own, strict=True))
    assert variant_images(items, "question_only") == [[], [], [], []]


# ------------------------------------------------------------------------------ end to end
def _copying_planner(msgs):
    """Calls detect_lesions on the first image, then answers with its summary."""
    system = str(msgs[0].content)
    if "Rate how likely the answer is correct" in system:  # prompts/confidence
        return ai(call("rate_confidence", confidence=0.9 if "found" in system else 0.2))
    found = re.findall(r"(E\d+) \(detect_lesions\): (.*)", system)
    if found:
        eid, summary = found[-1]
        return final(summary, [(summary, [eid])], 0.8)
    images = re.findall(r"(img-[0-9a-f]{12}):", system)
    if images:
        return ai(call("detect_lesions", image_id=images[0]))
    return final("I cannot tell without an image.", [], 0.5)


def test_medloop_eval_phantoms_with_scripted_model(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    out = tmp_path / "report"
    code = main(["eval", "phantoms:10", "--tools", "detect_lesions", "--json", "--out",
                 str(out), "--baseline-limit", "5", "--save-calibration",
                 str(tmp_path / "cal.json"), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rep = json.loads(captured.out)
    m = rep["metrics"]
    assert m["n_items"] == 10 and m["tool_calls_per_item"] == 1.0
    # the detector answers most phantom questions; the baselines cannot
    assert m["accuracy"] >= 0.6
    for name in ("blank", "shuffled", "question_only"):
        assert rep["baselines"][name]["n_items"] == 5
        assert rep["baselines"][name]["accuracy"] < m["accuracy"]
    assert rep["baselines"]["question_only"]["tool_calls_per_item"] == 0
    assert m["grounding_iou"] > 0.4 and m["size_error_mm_mean"] < 2.0
    assert rep["calibration"]["n_fit_items"] == 5 and rep["calibration"]["ece_after"] is not None
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 10 + 3 * 5
    # every item ran in its own thread: nothing from one question reached the next
    assert len({r["item_id"] + r["variant"] for r in records}) == len(records)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "latency.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert saved["n_fit"] == 10 and saved["method"] in ("identity", "temperature", "platt",
                                                        "isotonic")


def test_saved_calibration_is_applied_by_the_answer_node(monkeypatch, tmp_path, capsys):
    from agent.trust.calibration import Calibration, save_calibration

    cal_path = save_calibration(Calibration("platt", {"a": 0.0, "b": -2.0}, abstain_below=0.5),
                                tmp_path / "c.json")
    monkeypatch.setenv("MEDLOOP_CALIBRATION", str(cal_path))
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    code = main(["eval", "phantoms:2", "--tools", "detect_lesions", "--json",
                 "--baselines", "none", "-q"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    # sigmoid(-2) = 0.12 for every answer, below the saved threshold: all abstain
    assert rep["metrics"]["mean_confidence"] == pytest.approx(0.1192, abs=1e-3)
    assert rep["metrics"]["abstention_rate"] == 1.0


def test_elicited_confidence_and_self_consistency_are_reported(monkeypatch, capsys):
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    monkeypatch.setattr(
        "agent.llm.make_chat_model",
        lambda spec: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    code = main(["eval", "phantoms:3", "--tools", "detect_lesions", "--json", "--elicit",
                 "--repeats", "2", "--baselines", "none", "-q"])
    assert code == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["n_runs"] == 6 and m["repeats"] == 2
    # the scripted rater said 0.9 for every answer that reports a finding
    assert m["ece_elicited"] is not None and m["ece_agreement"] is not None
    assert len(m["accuracy_per_repeat"]) == 2


def test_confidence_prompt_renders():
    from prompts import load_prompt

    text = load_prompt("confidence").render(question="How many?", evidence="E1 (x): 2 found",
                                            answer="2")
    assert "Proposed answer: 2" in text and '{"confidence"' in text


def test_bad_eval_arguments_exit_2(capsys):
    assert main(["eval", "phantoms:2", "--baselines", "nonsense"]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert main(["eval", "/nonexistent/suite.json"]) == 2
    assert main(["eval", "phantoms:x"]) == 2
    assert main(["eval", "phantoms:2", "--temperature", "5"]) == 2
    assert "--temperature must be from 0 to 2" in capsys.readouterr().err


@pytest.mark.slow
def test_medloop_eval_phantoms_with_the_embedded_model(capsys, tmp_path, monkeypatch):
    """Two phantom items through the real embedded planner (SmolLM2-135M, llama.cpp)."""
    monkeypatch.setenv("MEDLOOP_CALIBRATION", "none")
    code = main(["eval", "phantoms:2", "--llm", "embedded", "--tools", "detect_lesions",
                 "--max-rounds", "2", "--baselines", "none", "--json", "--out",
                 str(tmp_path), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    m = json.loads(captured.out)["metrics"]
    assert m["n_items"] == 2 and m["errors"] == 0
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    for r in records:
        # the planner looked with the lesion detector before answering, and was graded
        assert r["tools"] == ["detect_lesions"] and r["answer"].strip()
        assert 0.0 <= r["confidence"] <= 1.0 and isinstance(r["correct"], bool)
    assert m["latency_s_p50"] > 0


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


def test_ece_noise_floor_is_what_perfect_calibration_scores_on_few_items():
    from agent.evaluation.metrics import ece, ece_noise_floor

    assert ece_noise_floor([1.0] * 50 + [0.0] * 50) == 0.0  # certain outcomes: no noise
    floor_small = ece_noise_floor([0.8] * 50)
    floor_big = ece_noise_floor([0.8] * 5000)
    # Bernoulli(0.8) on 50 items: |mean - 0.8| averages about sqrt(0.16/50)*0.8 = 0.045
    assert 0.03 < floor_small < 0.06
    assert floor_big < floor_small / 5  # shrinks as 1/sqrt(n)
    rng = np.random.default_rng(1)
    calibrated = [ece([0.8] * 50, list(rng.random(50) < 0.8)) for _ in range(300)]
    assert abs(float(np.mean(calibrated)) - floor_small) < 0.01


def test_a_suite_split_with_skip_and_limit_merges_back(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    parts = []
    for skip in (0, 3):
        out = tmp_path / f"part{skip}"
        assert main(["eval", "phantoms:6", "--tools", "detect_lesions", "--skip", str(skip),
                     "--limit", "3", "--baselines", "none", "--out", str(out), "-q"]) == 0
        parts.append((out / "records.jsonl").read_text())
    capsys.readouterr()
    merged = tmp_path / "merged.jsonl"
    merged.write_text("".join(parts))
    assert main(["eval", "phantoms:6", "--records", str(merged), "--json", "-q"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_items"] == 6
    ids = [json.loads(x)["item_id"] for x in merged.read_text().splitlines()]
    assert ids == [f"phantom-0-{i:04d}" for i in range(6)]
    assert main(["eval", "phantoms:6", "--skip", "6"]) == 2
    assert "leaves none" in capsys.readouterr().err
