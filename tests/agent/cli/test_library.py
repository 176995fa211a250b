"""A library built from labelled question-answer pairs, trained, and answering as tools.

``medloop index build items.jsonl`` (the dev set's format) then ``medloop library train``,
on the 12-image VQA-RAD fixture; the run that names the library is offered ``case_answer`` and
the trained-heads ``classify``, and both answer about a real image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import AgentContext
from agent.cli.main import main
from agent.planner.toolset import default_tools, tool_catalog
from tools.ingest.loader import load_image

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa") / "lib"
    assert main(["index", "build", str(FIXTURE / "items.jsonl"), "--out", str(out),
                 "--json", "-q"]) == 0
    return out


def test_build_from_pairs_and_train_heads(built, capsys):
    capsys.readouterr()
    assert main(["library", "train", str(built), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"organ", "modality"} <= set(json.dumps(summary).replace('"', " ").split())
    assert (built / "heads.json").exists() and (built / "qa.jsonl").exists()


def test_the_library_answers_through_its_tools(built, store, medloop_home, capsys):
    if not (built / "heads.json").exists():  # when run alone
        assert main(["library", "train", str(built), "--json"]) == 0
        capsys.readouterr()
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu", library=str(built))
    offered = {(e.name, e.variant) for e in tool_catalog(ctx) if e.offered}
    assert ("case_answer", "vqa-library") in offered
    tools = {t.name: t for t in default_tools(ctx, store)}
    image = store.put(load_image(FIXTURE / "images" / "synpic55317.jpg")).id  # a head MR
    ev = tools["case_answer"].invoke({"image_id": image,
                                      "question": "What imaging modality was used?"})
    assert ev.tool == "case_answer" and ev.status == "ok" and 0.0 <= ev.score <= 1.0
    assert ("classify", "trained-heads") in offered
    cls = tools["classify"].invoke({"image_id": image, "task": "organ"})
    assert "head" in cls.summary.lower()


def test_library_train_on_a_folder_that_is_not_a_library_exits_2(tmp_path, capsys):
    assert main(["library", "train", str(tmp_path)]) == 2
    assert "not a case library" in capsys.readouterr().err
