"""The runner: baseline variants, and one item graded from a run's state and typed trace."""

from __future__ import annotations

import numpy as np

from agent.answer import Answer, Claim
from agent.evaluation import load_suite
from agent.evaluation.items import EvalItem
from agent.evaluation.runner import run_item, variant_images


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


class _Graph:
    """Returns one finished state, as ``graph.invoke`` does; records the input it was given."""

    def __init__(self, state=None, error=None):
        self.state, self.error, self.inputs = state, error, []

    def invoke(self, inputs, config):
        self.inputs.append((inputs, config))
        if self.error:
            raise self.error
        return self.state


def test_run_item_reads_tool_calls_and_raw_confidence_from_the_typed_trace(store):
    answer = Answer(text="Yes, 1 focal lesion found.", confidence=0.7,
                    findings=[Claim(statement="1 focal lesion found", evidence_ids=["E1"])])
    trace = [
        {"turn": 1, "step": "ingest", "images": []},
        {"turn": 1, "round": 1, "step": "think", "elapsed_s": 0.1, "calls": ["detect_lesions"]},
        {"turn": 1, "round": 1, "step": "act", "tool": "detect_lesions", "args": {},
         "status": "ok", "evidence_id": "E1", "elapsed_s": 0.2, "summary": "1 found"},
        {"turn": 1, "round": 2, "step": "act", "tool": "measure", "args": {},
         "status": "error", "evidence_id": "E2", "elapsed_s": 0.1, "summary": "no mask"},
        {"turn": 1, "round": 2, "step": "answer", "confidence": 0.7, "raw_confidence": 0.9,
         "calibration": "platt", "abstained": False, "budget_exhausted": False,
         "agreement": 0.75},
    ]
    graph = _Graph({"answer": answer, "trace": trace, "evidence": []})
    item = EvalItem(id="q1", question="Is there a lesion?", answer="yes", answer_type="yesno")
    rec = run_item(graph, store, item, [], variant="question_only", repeat=1)
    assert rec.correct and rec.parsed == "yes"
    assert rec.tool_calls == 2 and rec.tools == ["detect_lesions", "measure"]
    assert rec.confidence == 0.7 and rec.raw_confidence == 0.9 and rec.agreement == 0.75
    assert graph.inputs[0][0]["images"] == []
    assert graph.inputs[0][1]["configurable"]["thread_id"].startswith("eval-q1-question_only-1-")

    # no answer record (an older trace): the answer's own confidence, no agreement
    graph = _Graph({"answer": answer, "trace": trace[:3]})
    rec = run_item(graph, store, item, [])
    assert rec.raw_confidence == 0.7 and rec.agreement is None and rec.tool_calls == 1


def test_a_run_that_raises_is_recorded_as_wrong(store):
    item = EvalItem(id="q2", question="How many?", answer="2", answer_type="count")
    rec = run_item(_Graph(error=RuntimeError("boom")), store, item, [])
    assert not rec.correct and rec.confidence == 0.0 and rec.abstained
    assert rec.error == "RuntimeError: boom"


def test_each_record_carries_the_answers_conflicts_with_its_cited_evidence(store):
    from tools.evidence import Assertion, Evidence

    lesions = Evidence(id="E1", tool="detect_lesions", summary="2 focal lesions found",
                       assertions=[Assertion(finding="lesion", present=True, count=2)])
    item = EvalItem(id="k1", question="Are the kidneys normal?", answer="no",
                    answer_type="yesno", images=["kidney.jpg"], meta={"organ": "ABD"})
    # "No ... normal" to "normal?" contradicts itself; "no lesion" contradicts E1's lesions
    bad = Answer(text="No, the kidneys appear to be normal.", confidence=0.86,
                 findings=[Claim(statement="There is no lesion.", evidence_ids=["E1"])])
    rec = run_item(_Graph({"answer": bad, "evidence": [lesions], "trace": []}), store, item, [])
    assert rec.conflicts and any("E1" in c for c in rec.conflicts)
    assert any("contradicts itself" in c for c in rec.conflicts)
    assert rec.item_images == ["kidney.jpg"] and rec.domain == "clinical"

    good = Answer(text="No, they are not normal.", confidence=0.7,
                  findings=[Claim(statement="2 focal lesions found", evidence_ids=["E1"])])
    rec = run_item(_Graph({"answer": good, "evidence": [lesions], "trace": []}), store, item, [])
    assert rec.conflicts == []
    # an abstention's prefix is not read as part of the answer
    unsure = good.model_copy(update={"text": "Uncertain (confidence 0.30): No lesion is seen.",
                                     "abstained": True})
    rec = run_item(_Graph({"answer": unsure, "evidence": [lesions], "trace": []}), store, item,
                   [])
    assert rec.abstained and any("no lesion" in c for c in rec.conflicts)


def test_open_records_carry_exact_match_and_token_recall(store):
    item = EvalItem(id="m1", question="What modality?", answer="CT", answer_type="open")
    ans = Answer(text="This is a CT of the abdomen.", confidence=0.6)
    rec = run_item(_Graph({"answer": ans, "trace": []}), store, item, [])
    assert rec.correct and rec.exact_match is False and rec.token_recall == 1.0
    phantom = load_suite("phantoms:1")[0]
    rec = run_item(_Graph({"answer": ans, "trace": []}), store, phantom, [])
    assert rec.exact_match is None and rec.domain == "phantom"
    assert rec.item_images == [phantom.images[0].content_id()]


def test_an_abstention_that_gives_no_answer_is_never_right(store, tmp_path):
    import dataclasses
    import json

    from agent.evaluation.runner import read_records

    declined = Answer(
        text="No offline tool can answer this question: E1 (case_answer) No answer: similar "
             "cases cannot answer this kind of question reliably. This needs review by a "
             "radiologist.\nWhat the tools found:\n- E1 (describe_image): a CT image.",
        confidence=0.05, abstained=True,
        findings=[Claim(statement="a CT image", evidence_ids=["E1"])])
    closed = EvalItem(id="a1", question="Is this abnormal?", answer="no", answer_type="yesno")
    rec = run_item(_Graph({"answer": declined, "trace": []}), store, closed, [])
    assert rec.abstained and not rec.correct and rec.parsed is None  # "No offline..." is no "no"
    opened = EvalItem(id="a2", question="What modality?", answer="CT", answer_type="open")
    rec_open = run_item(_Graph({"answer": declined, "trace": []}), store, opened, [])
    assert not rec_open.correct and rec_open.exact_match is False and rec_open.token_recall == 0
    # an abstention that states its answer is graded on it
    unsure = Answer(text="Uncertain (confidence 0.30): No. This needs review by a radiologist.",
                    confidence=0.3, abstained=True)
    assert run_item(_Graph({"answer": unsure, "trace": []}), store, closed, []).correct
    # records an older scorer graded as right are read back as not right
    old = dataclasses.replace(rec, correct=True, parsed="no")
    old_open = dataclasses.replace(rec_open, correct=True, token_recall=1.0)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in (old, old_open)))
    back = read_records(str(path))
    assert [(r.correct, r.parsed) for r in back] == [(False, None), (False, None)]
    assert back[1].token_recall == 0.0 and back[1].exact_match is False
