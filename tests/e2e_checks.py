"""What a real planner's answer to "Describe this image" on the chest radiograph must show,
whatever its prose: it looked before it spoke, with an id that exists, and every claim cites
successful evidence (shared by the end-to-end tests of each packaged planner)."""

from __future__ import annotations

import json
from typing import Any

from pydicom.data import get_testdata_file

from agent.cli.main import main


def ask_about_the_radiograph(capsys: Any, llm: str) -> dict[str, Any]:
    """``medloop ask RG1_UNCI.dcm "Describe this image" --json`` with ``llm``; checked."""
    code = main(["ask", get_testdata_file("RG1_UNCI.dcm"), "Describe this image", "--json",
                 "--llm", llm, "--checkpoint", "memory"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    image_id = data["images"][0]["id"]
    evidence = {e["id"]: e for e in data["evidence"]}
    thinks = [t for t in data["trace"] if t["step"] == "think"]
    acts = [t for t in data["trace"] if t["step"] == "act"]
    assert thinks[0]["calls"] and thinks[0]["calls"][0] != "final_answer"
    assert acts and acts[0]["args"]["image_id"] == image_id
    assert any(e["status"] == "ok" and e["image_id"] == image_id for e in evidence.values())
    assert data["answer"].strip()
    for f in data["findings"]:
        assert f["evidence_ids"] and all(evidence[i]["status"] == "ok" for i in f["evidence_ids"])
    assert 0.0 <= data["confidence"] <= 1.0
    assert data["trace"][-1]["step"] == "answer"
    return data
