"""``medloop ask``: JSON shape, exit codes, conversation threads, progress, settings."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from agent.cli.ask import progress_line
from agent.cli.main import main
from tools.ingest.loader import load_image

RG1 = get_testdata_file("RG1_UNCI.dcm")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,needle", [
    (["ask", RG1, "q", "--llm", "gpt-4"], "bad --llm"),
    (["ask", RG1, "q", "--checkpoint", "redis://x"], "bad checkpoint"),
    (["ask", "q-only"], "at least one IMAGE"),
    # a second question where an image should be: named, before any file is opened
    (["ask", RG1, "Is this a CT?", RG1, "Is it normal?"], "'Is this a CT?' is not an image"),
    (["ask", "/nonexistent/chest.dcm", "q", "--llm", "openai:m@http://127.0.0.1:9/v1"], "chest.dcm"),
])
def test_ask_bad_input_exits_2(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert needle in err


def test_ask_end_to_end_with_an_openai_compatible_server(capsys, server):
    image_id = load_image(RG1).content_id()
    server.reply_calls(("describe_image", {"image_id": image_id}))
    server.reply_calls(("final_answer", {
        "answer": "A chest radiograph (CR).",
        "claims": [{"statement": "the image is a CR radiograph", "evidence_ids": ["E2"]}],
        "confidence": 0.8}))
    server.reply_text("1841 x 1955 pixels.")  # the follow-up turn answers in text
    server.reply_calls(("final_answer", {
        "answer": "1841 x 1955 pixels.",
        "claims": [{"statement": "1841 x 1955 px", "evidence_ids": ["E2"]}], "confidence": 0.7}))
    code, out, err = run_cli(capsys, "ask", RG1, "Describe this image", "--json",
                             "--llm", f"openai:test@{server.url}", "--thread", "cli-1")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"answer", "confidence", "abstained", "findings", "evidence", "trace"}
    assert data["answer"] == "A chest radiograph (CR)." and not data["abstained"]
    assert data["findings"] == [{"statement": "the image is a CR radiograph", "evidence_ids": ["E2"]}]
    # case_answer was asked first, without a planner call; its "no answer" stands beside the
    # description the question asked for
    assert [e["tool"] for e in data["evidence"]] == ["case_answer", "describe_image"]
    assert [t["step"] for t in data["trace"]] == [
        "ingest", "think", "act", "think", "act", "think", "rethink", "answer"]
    assert data["trace"][1]["consulted"] and data["trace"][1]["calls"] == ["case_answer"]
    assert "[medloop] consult case_answer (asked first, no planner call)" in err
    assert "[medloop] act    describe_image → ok" in err  # progress on stderr
    # The request carried the tools, with the image id as the only allowed value.
    tools = {t["function"]["name"]: t for t in server.requests[0]["body"]["tools"]}
    assert tools["describe_image"]["function"]["parameters"]["properties"]["image_id"]["enum"] == [image_id]
    # No PHI and no file path in what went to the model.
    sent = json.dumps(server.requests)
    assert "RG1_UNCI" not in sent and "data_store" not in sent

    code, out, err = run_cli(capsys, "ask", RG1, "What is the size of this image?", "--json",
                             "--llm", f"openai:test@{server.url}", "--thread", "cli-1")
    assert code == 0, err
    second = json.loads(out)
    assert second["answer"] == "1841 x 1955 pixels." and second["thread"] == "cli-1"
    assert all(t["turn"] == 2 for t in second["trace"])
    # the follow-up prompt held the first turn's question and answer
    history = json.dumps(server.requests[2]["body"]["messages"])
    assert "Describe this image" in history and "A chest radiograph (CR)." in history


def test_bad_planner_settings_are_named_before_any_model_loads(capsys):
    code, _, err = run_cli(capsys, "ask", RG1, "What is this?", "--samples", "-1")
    assert code != 0 and "answer_samples must be 0" in err
    # (the same options of ``medloop eval``: tests/agent/cli/test_eval.py)


def test_llm_comes_from_the_environment_unless_given(capsys, monkeypatch):
    monkeypatch.setenv("MEDLOOP_LLM", "gpt-4")
    code, _, err = run_cli(capsys, "ask", RG1, "q")
    assert code == 2 and "bad --llm 'gpt-4'" in err  # MEDLOOP_LLM applies when --llm is unset
    monkeypatch.setenv("MEDLOOP_LLM", "openai:m@http://127.0.0.1:9/v1")
    code, _, err = run_cli(capsys, "ask", RG1, "q", "--llm", "hf:")
    assert code == 2 and "bad --llm 'hf:'" in err  # --llm wins over it
    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "many")
    code, _, err = run_cli(capsys, "ask", RG1, "q")
    assert code == 2 and "MEDLOOP_LLM_THREADS" in err  # a malformed variable is named


def test_ask_with_the_planner_from_medloop_llm(capsys, server, monkeypatch):
    server.reply_calls(("final_answer", {"answer": "A radiograph.", "claims": [],
                                         "confidence": 0.6}))
    monkeypatch.setenv("MEDLOOP_LLM", f"openai:test@{server.url}")
    code, out, err = run_cli(capsys, "ask", RG1, "What is it?", "--json", "--checkpoint",
                             "memory", "--max-rounds", "1")
    assert code == 0, err
    data = json.loads(out)
    assert data["llm"] == f"openai:test@{server.url}" and len(server.requests) >= 1
    assert f"thinking with openai:test@{server.url}" in err


def test_progress_lines_read_the_typed_trace():
    assert progress_line({"turn": 1, "round": 2, "step": "think", "elapsed_s": 1.25,
                          "calls": ["detect_lesions", "measure"]}) == \
        "think  round 2: detect_lesions, measure (1.2 s)"
    assert progress_line({"turn": 1, "round": 1, "step": "think", "elapsed_s": 0.5,
                          "calls": []}).startswith("think  round 1: a reply")
    assert progress_line({"turn": 1, "round": 2, "step": "think", "elapsed_s": 0.0,
                          "calls": [], "stopped": "E1 (case_answer) declined this question"}) == \
        "stop   E1 (case_answer) declined this question"
    assert progress_line({"turn": 1, "round": 1, "step": "act", "tool": "describe_image",
                          "args": {}, "status": "ok", "evidence_id": "E1", "elapsed_s": 0.031,
                          "summary": ""}) == "act    describe_image → ok (0.03 s)"
    assert progress_line({"turn": 1, "round": 1, "step": "rethink", "decision": "think",
                          "supported": 0, "problems": ["x", "y"], "contradictions": []}) == \
        "rethink think: 2 problem(s)"
    assert progress_line({"turn": 1, "step": "ingest", "images": []}) == "ingest"


def test_ask_sr_writes_a_structured_report_on_keyed_pseudonyms(capsys, server, tmp_path):
    import highdicom as hd
    import pydicom

    from tests.tools.export.test_dicom_seg import dciodvfy_errors

    ct = get_testdata_file("CT_small.dcm")
    image_id = load_image(ct).content_id()
    # two runs, two processes' worth of state: one pseudonymous study; E1 is case_answer's,
    # asked first
    for _ in range(2):
        server.reply_calls(("describe_image", {"image_id": image_id}))
        server.reply_calls(("final_answer", {
            "answer": "A CT image.",
            "claims": [{"statement": "the image is a CT slice", "evidence_ids": ["E2"]}],
            "confidence": 0.8}))
    outs = []
    for run in ("one", "two"):
        out = tmp_path / run / "answer.dcm"
        code, stdout, err = run_cli(capsys, "ask", ct, "What is this?", "--json", "--sr",
                                    str(out), "--llm", f"openai:test@{server.url}")
        assert code == 0, err
        data = json.loads(stdout)
        assert data["dicom"]["written"] == [str(out)]  # no masks, so no SEG
        assert dciodvfy_errors(out) == []
        outs.append(pydicom.dcmread(out))
    first, second = outs
    original = pydicom.dcmread(ct, stop_before_pixels=True)
    assert first.StudyInstanceUID == second.StudyInstanceUID != original.StudyInstanceUID
    assert first.PatientID == second.PatientID != original.PatientID
    assert first.SOPInstanceUID != second.SOPInstanceUID  # two reports of one study
    sr = hd.sr.srread(tmp_path / "one" / "answer.dcm")
    groups = sr.content.get_image_measurement_groups()
    assert groups[0].tracking_identifier == "Answer: A CT image."
    spacing = {m.name.meaning: (m.value, m.unit.value) for m in groups[1].get_measurements()}
    assert spacing["row_spacing"][1] == "mm"


def test_ask_sr_needs_a_dicom_image(capsys, server, tmp_path):
    code, _, err = run_cli(capsys, "ask", RG1, "q", "--seg", str(tmp_path / "s.dcm"))
    assert code == 2 and "--seg needs --sr" in err
