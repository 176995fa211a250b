"""``medloop index``: problems the user can fix exit 2 before any embedder loads; building and
searching a real library."""

from __future__ import annotations

import json

import pytest


def test_an_empty_folder_and_an_unknown_embedder_exit_2(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli("index", "build", str(empty), "--out", str(tmp_path / "lib"))
    assert code == 2 and out == "" and "no cases found" in err
    data = tmp_path / "reports"
    data.mkdir()
    (data / "cases.jsonl").write_text(json.dumps({"case_id": "r0", "report": "Effusion."}) + "\n")
    code, _, err = cli("index", "build", str(data), "--out", str(tmp_path / "lib"),
                       "--image-embedder", "resnet")
    assert code == 2 and "unknown embedder 'resnet'" in err


def test_searching_a_missing_library_exits_2(cli, tmp_path):
    code, out, err = cli("index", "search", str(tmp_path / "nothing"), "--text", "x")
    assert code == 2 and out == "" and err.startswith("medloop: ")


@pytest.mark.slow
def test_cli_index_build_and_search_reports(tmp_path, capsys):
    from agent.cli.main import main

    data = tmp_path / "reports"
    data.mkdir()
    reports = ["Large right pleural effusion.", "Heart size is enlarged, cardiomegaly.",
               "No acute cardiopulmonary abnormality.", "Left apical pneumothorax."]
    (data / "cases.jsonl").write_text("".join(
        json.dumps({"case_id": f"r{i}", "report": r, "labels": ["x"]}) + "\n"
        for i, r in enumerate(reports)))
    out = tmp_path / "idx"
    assert main(["index", "build", str(data), "--out", str(out), "--image-embedder", "none",
                 "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 4 and summary["report_vectors"] == 4
    assert summary["text_embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384}
    assert summary["index_type"] == "flat"
    assert main(["index", "search", str(out), "--text", "collapsed lung", "-k", "2",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["case_id"] == "r3" and set(hits[0]) >= {"case_id", "score", "image", "report"}
    assert main(["index", "search", str(out), "--image", str(data / "cases.jsonl")]) == 2
    assert main(["index", "search", str(tmp_path / "nothing"), "--text", "x"]) == 2
    capsys.readouterr()
