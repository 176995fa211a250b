"""The ``medloop`` command line: JSON shapes, exit codes, conversation threads."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from agent.cli.main import main
from tools.ingest.loader import load_image

RG1 = get_testdata_file("RG1_UNCI.dcm")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_deidentified_summary(capsys):
    code, out, err = run_cli(capsys, "inspect", RG1, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["modality"] == "CR" and data["source_format"] == "dicom"
    assert data["shape"][0] > 1000 and data["id"].startswith("img-")
    import pydicom

    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    for phi in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if phi:
            assert phi not in out


def test_inspect_bad_input_exits_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all")
    code, out, err = run_cli(capsys, "inspect", str(bad), "--json")
    assert code == 2 and out == ""
    assert err.startswith("medloop: ") and err.count("\n") == 1 and "notes.txt" in err


@pytest.mark.parametrize("argv,needle", [
    (["ask", RG1, "q", "--llm", "gpt-4"], "bad --llm"),
    (["ask", RG1, "q", "--checkpoint", "redis://x"], "bad checkpoint"),
    (["ask", "q-only"], "at least one IMAGE"),
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
        "claims": [{"statement": "the image is a CR radiograph", "evidence_ids": ["E1"]}],
        "confidence": 0.8}))
    server.reply_text("Still a CR radiograph.")  # the follow-up turn answers in text
    server.reply_calls(("final_answer", {
        "answer": "Still a CR radiograph.",
        "claims": [{"statement": "CR radiograph", "evidence_ids": ["E1"]}], "confidence": 0.7}))
    code, out, err = run_cli(capsys, "ask", RG1, "Describe this image", "--json",
                             "--llm", f"openai:test@{server.url}", "--thread", "cli-1")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"answer", "confidence", "abstained", "findings", "evidence", "trace"}
    assert data["answer"] == "A chest radiograph (CR)." and not data["abstained"]
    assert data["findings"] == [{"statement": "the image is a CR radiograph", "evidence_ids": ["E1"]}]
    assert data["evidence"][0]["id"] == "E1" and data["evidence"][0]["tool"] == "describe_image"
    assert [t["step"] for t in data["trace"]] == ["ingest", "think", "act", "think", "rethink", "answer"]
    assert "[medloop] act    describe_image → ok" in err  # progress on stderr
    # The request carried the tools, with the image id as the only allowed value.
    tools = {t["function"]["name"]: t for t in server.requests[0]["body"]["tools"]}
    assert tools["describe_image"]["function"]["parameters"]["properties"]["image_id"]["enum"] == [image_id]
    # No PHI and no file path in what went to the model.
    sent = json.dumps(server.requests)
    assert "RG1_UNCI" not in sent and "data_store" not in sent

    code, out, err = run_cli(capsys, "ask", RG1, "Is it still the same image?", "--json",
                             "--llm", f"openai:test@{server.url}", "--thread", "cli-1")
    assert code == 0, err
    second = json.loads(out)
    assert second["answer"] == "Still a CR radiograph." and second["thread"] == "cli-1"
    assert all(t["turn"] == 2 for t in second["trace"])
    # the follow-up prompt held the first turn's question and answer
    history = json.dumps(server.requests[2]["body"]["messages"])
    assert "Describe this image" in history and "A chest radiograph (CR)." in history


def test_deid_cli_on_a_folder(capsys, tmp_path):
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "a.dcm")
    (src / "notes.txt").write_text("not dicom")
    code, out, err = run_cli(capsys, "deid", str(src), str(tmp_path / "out"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["files"] == 1 and data["skipped"] == ["notes.txt"]
    assert (tmp_path / "out" / "a.dcm").exists()
    import pydicom

    assert pydicom.dcmread(tmp_path / "out" / "a.dcm").PatientIdentityRemoved == "YES"
    code, _, err = run_cli(capsys, "deid", str(src), str(src / "inside"))
    assert code == 2 and "must not lie inside" in err


def test_bad_planner_settings_are_named_before_any_model_loads(capsys):
    code, _, err = run_cli(capsys, "ask", RG1, "What is this?", "--samples", "-1")
    assert code != 0 and "answer_samples must be 0" in err
    code, _, err = run_cli(capsys, "eval", "phantoms:2", "--route-tools", "-1")
    assert code != 0 and "route_tools must be 0" in err
    code, _, err = run_cli(capsys, "eval", "phantoms:2", "--sample-temperature", "0")
    assert code != 0 and "sample_temperature" in err
