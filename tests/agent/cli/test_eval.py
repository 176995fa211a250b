"""``medloop eval``: a suite end to end on a scripted planner, its options and exit codes.

The harness's parts (readers, grading, baselines, metrics, reports) are tested beside their
modules in tests/agent/evaluation/."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from agent.cli.main import main
from agent.context import AgentContext
from agent.evaluation import load_suite, majority_records
from tests.fakes import ScriptedChatModel, ai, call, final


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
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
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
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
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
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    monkeypatch.setattr(
        "agent.llm.make_chat_model",
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    code = main(["eval", "phantoms:3", "--tools", "detect_lesions", "--json", "--elicit",
                 "--repeats", "2", "--baselines", "none", "-q"])
    assert code == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["n_runs"] == 6 and m["repeats"] == 2
    # the scripted rater said 0.9 for every answer that reports a finding
    assert m["ece_elicited"] is not None and m["ece_agreement"] is not None
    assert len(m["accuracy_per_repeat"]) == 2


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
    # One thread: llama.cpp's threads spin while they wait, and with another process on the
    # two cores this test went past its 10-minute limit twice (22 s on a quiet machine).
    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "1")
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


def test_a_suite_split_with_skip_and_limit_merges_back(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
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
    # re-running chosen items: only those, and a missing id is named
    again = tmp_path / "again"
    assert main(["eval", "phantoms:6", "--tools", "detect_lesions", "--ids",
                 "phantom-0-0004,phantom-0-0001", "--baselines", "none", "--out", str(again),
                 "-q"]) == 0
    rerun = [json.loads(x)["item_id"] for x in (again / "records.jsonl").read_text().splitlines()]
    assert rerun == ["phantom-0-0001", "phantom-0-0004"]  # in the suite's order
    capsys.readouterr()
    assert main(["eval", "phantoms:6", "--ids", "phantom-0-0001,nope"]) == 2
    assert "--ids: nope not among" in capsys.readouterr().err


def test_bad_planner_settings_are_named_before_any_model_loads(capsys):
    assert main(["eval", "phantoms:2", "--route-tools", "-1"]) != 0
    assert "route_tools must be 0" in capsys.readouterr().err
    assert main(["eval", "phantoms:2", "--sample-temperature", "0"]) != 0
    assert "sample_temperature" in capsys.readouterr().err


def _args(*argv):
    from agent.cli.main import build_parser

    return build_parser().parse_args(["eval", "phantoms:2", *argv])


def test_eval_settings_are_context_fields_and_the_environment_is_left_alone(monkeypatch):
    import os

    from agent.cli.eval import run_context

    monkeypatch.setenv("MEDLOOP_LLM", "openai:m@http://127.0.0.1:9/v1")
    monkeypatch.setenv("MEDLOOP_CALIBRATION", "/some/cal.json")
    monkeypatch.setenv("MEDLOOP_LLM_TEMPERATURE", "0.3")
    before = dict(os.environ)
    ctx = run_context(_args())
    assert ctx.llm == "openai:m@http://127.0.0.1:9/v1"  # unset options: the environment's
    assert ctx.calibration == "/some/cal.json" and ctx.llm_temperature == 0.3
    assert ctx.checkpoint == "memory" and ctx.max_rounds == 5 and ctx.answer_samples == 0
    ctx = run_context(_args("--llm", "embedded", "--raw", "--temperature", "0.9",
                            "--max-rounds", "2", "--samples", "3"))
    assert ctx.llm == "embedded" and ctx.calibration == "none" and ctx.llm_temperature == 0.9
    assert ctx.max_rounds == 2 and ctx.answer_samples == 3
    assert dict(os.environ) == before


def test_the_elicitor_gets_the_planners_threads_and_temperature(monkeypatch, capsys):
    made = []

    def fake(spec, **kw):
        made.append((spec, kw))
        return ScriptedChatModel.of(_copying_planner for _ in itertools.count())

    monkeypatch.setattr("agent.nodes.think.make_chat_model", fake)
    monkeypatch.setattr("agent.llm.make_chat_model", fake)
    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "2")
    code = main(["eval", "phantoms:1", "--tools", "detect_lesions", "--elicit", "--temperature",
                 "0.5", "--baselines", "none", "--json", "-q"])
    assert code == 0, capsys.readouterr().err
    # think and the elicitor ask for the same model: same spec, threads, temperature and home
    assert made and all(m[0] == "embedded" and m[1]["threads"] == 2
                        and m[1]["temperature"] == 0.5 for m in made)
    assert len({str(m[1]["home"]) for m in made}) == 1


def test_medloop_eval_on_real_vqa_rad_items_reports_splits_baselines_and_domain(
        monkeypatch, capsys, tmp_path, medloop_home):
    """The dev set's JSON-lines as is: splits, the majority baseline, a clinical-only map."""
    from pathlib import Path

    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec, **kw: ScriptedChatModel.of(_copying_planner for _ in itertools.count()),
    )
    monkeypatch.delenv("MEDLOOP_CALIBRATION", raising=False)
    mini = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"
    out = tmp_path / "rep"
    code = main(["eval", str(mini), "--limit", "24", "--tools", "detect_lesions", "--baselines",
                 "majority,question_only", "--folds", "3", "--out", str(out),
                 "--save-calibration", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out
    assert "by closed/open: full | question_only | majority" in text
    assert "by category:" in text and "by organ:" in text and "calibration [clinical]" in text
    assert "answers contradicting their cited evidence:" in text
    rep = json.loads((out / "report.json").read_text())
    m = rep["metrics"]
    assert m["n_items"] == 24 and m["n_closed"] + m["n_open"] == 24
    assert m["open_exact_match"] is not None and m["open_token_recall"] is not None
    assert m["answers_contradicting_evidence"] <= m["answers_contradicting_evidence_all"]
    assert rep["baselines"]["majority"]["n_items"] == 24  # on every item, from other folds
    # fitted on the whole suite's folds by image (those --library-folds builds libraries
    # from), not on the other folds of the 24 items that ran
    whole = load_suite(str(mini))
    ran = {it.id for it in whole[:24]}
    right = sum(r.correct for r in majority_records(whole, 3, 0) if r.item_id in ran)
    cut = sum(r.correct for r in majority_records(whole[:24], 3, 0))
    assert right != cut  # the fixture tells the two apart
    assert rep["baselines"]["majority"]["accuracy"] == pytest.approx(right / 24, abs=1e-4)
    assert set(rep["by_split"]["organ"]) == {"HEAD", "CHEST", "ABD"}
    assert rep["by_split"]["category"]["PRES"]["majority"]["n"] > 0
    assert rep["calibration"]["domain"] == "clinical"
    assert list(rep["calibration_by_domain"]) == ["clinical"]
    # per category, what the cross-fitted map lets through is no more than what was answered
    stated, answered = rep["by_category_at_threshold"], rep["by_category_answered"]
    assert set(stated) == set(answered) and "crossfit_passed_ids" not in rep["calibration"]
    assert all(stated[c]["answered"] <= answered[c]["answered"] for c in stated)
    assert "stated without 'Uncertain' at the cross-fitted threshold" in text
    # saved under the name the answer node looks up for clinical images only
    saved = json.loads((medloop_home / "calibration" / "embedded-smollm2-135m.clinical.json").read_text())
    assert saved["domain"] == "clinical" and saved["n_fit"] == 24
    assert not (medloop_home / "calibration" / "embedded-smollm2-135m.json").exists()
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in records} == {"full", "question_only"}
    full = [r for r in records if r["variant"] == "full"]
    assert all(r["domain"] == "clinical" and r["item_images"] for r in full)
    assert all(isinstance(r["conflicts"], list) for r in full)


def _case_planner(msgs):
    """Asks case_answer the user's question about the first image, then answers with it."""
    system = str(msgs[0].content)
    found = re.findall(r"(E\d+) \(case_answer\): (.*)", system)
    if found:
        eid, summary = found[-1]
        said = re.search(r"Answer: (yes|no)", summary) or re.search(r"answer '([^']+)'", summary)
        return final(said.group(1) if said else "I cannot tell.", [(summary, [eid])], 0.7)
    question = next(str(m.content) for m in msgs if m.type == "human")
    images = re.findall(r"(img-[0-9a-f]{12}):", system)
    return ai(call("case_answer", image_id=images[0], question=question))


def test_library_folds_answer_each_item_without_its_own_image(monkeypatch, capsys, tmp_path):
    """Cross-fitted libraries through the CLI: no item's own image is among its neighbours."""
    import functools

    import agent.cli.eval as cli_eval

    monkeypatch.setenv("MEDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli_eval, "fold_libraries", functools.partial(
        cli_eval.fold_libraries, image_embedder="thumbnail-32"))  # cheap; the split is tested
    monkeypatch.setattr(
        "agent.nodes.think.make_chat_model",
        lambda spec, **kw: ScriptedChatModel.of(_case_planner for _ in itertools.count()),
    )
    mini = "tests/fixtures/vqa_rad_mini/items.jsonl"
    code = main(["eval", mini, "--library-folds", "--folds", "3", "--limit", "30",
                 "--baselines", "none", "--tools", "case_answer", "--out", str(tmp_path / "r"),
                 "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(x) for x in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 30 and all(r["tools"] == ["case_answer"] for r in records)
    for r in records:
        own = r["item_images"][0].rsplit("/", 1)[-1]
        assert own not in " ".join(r["evidence"]), (r["item_id"], r["evidence"])
    closed = [r for r in records if r["answer_type"] == "yesno"]
    # each yes/no is answered, or withheld because its fold library's own table says the
    # cases do no better than the commonest answer on that kind of question
    withheld = [r for r in closed if "No answer: similar cases" in " ".join(r["evidence"])]
    assert closed and all(r["parsed"] in ("yes", "no") for r in closed if r not in withheld)
    folds = sorted((tmp_path / "home" / "eval-libraries").glob("*/fold-*"))
    assert folds and all((f / "reliability.json").exists() for f in folds)
    assert main(["eval", "phantoms:3", "--library-folds"]) == 2
    assert "labelled JSON-lines suite" in capsys.readouterr().err


def test_the_shipped_library_is_left_out_of_a_run_on_images_it_learnt(monkeypatch, capsys,
                                                                      medloop_home):
    """Scored with a library holding their own labels, dev images would report memory."""
    from agent.cli.eval import _unlearnt
    from agent.evaluation.readers import load_suite

    mini = "tests/fixtures/vqa_rad_mini/items.jsonl"  # dev images, shrunk and re-encoded
    ctx = AgentContext(home=medloop_home, checkpoint=None)
    assert ctx.answers_library_path is not None
    left = _unlearnt(ctx, load_suite(mini)[:3], quiet=False)
    assert left.answers_library_path is None
    assert "built from 1 of this suite's images" in capsys.readouterr().err
    phantoms = load_suite("phantoms:2")
    assert _unlearnt(ctx, phantoms, quiet=False) is ctx  # nothing of its own there
    # through the CLI: case_answer is not among the run's tools at all
    assert main(["eval", mini, "--limit", "2", "--tools", "case_answer", "--baselines",
                 "none"]) == 2
    err = capsys.readouterr().err
    assert "left out of this run" in err and "unknown tool 'case_answer'" in err


def test_save_calibration_into_a_folder_names_each_map(tmp_path):
    """A folder given to --save-calibration gets each domain's map under the name the answer
    node looks up (before, writing the map onto the folder was an internal error)."""
    from agent.cli.eval import _calibration_target

    target = _calibration_target(str(tmp_path), AgentContext.from_env(), "embedded")
    assert callable(target)
    assert target("clinical") == tmp_path / "embedded-smollm2-135m.clinical.json"
    assert _calibration_target(str(tmp_path / "cal.json"), AgentContext.from_env(),
                               "embedded") == tmp_path / "cal.json"
