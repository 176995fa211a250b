"""rethink's rules, as pure functions."""

from __future__ import annotations

import pytest

from agent.answer import FinalAnswerArgs, ProposedClaim
from agent.trust.checks import check_claim, find_contradictions, numbers_in, review
from tools.evidence import Assertion, Evidence, Measurement


def ev(i, summary="", status="ok", **kw):
    return Evidence(id=f"E{i}", tool=kw.pop("tool", "t"), summary=summary, status=status, **kw)


@pytest.mark.parametrize(
    "text,nums",
    [
        ("area 12.5 mm2 and 3 lesions", [12.5, 3.0]),
        ("ratio -0.45", [-0.45]),
        ("no numbers", []),
        ("img-1a2b", []),  # digits inside a word are not numbers
    ],
)
def test_numbers_in(text, nums):
    assert numbers_in(text) == nums


def test_claim_numbers_must_match_cited_evidence():
    evidence = {
        "E1": ev(
            1,
            "lung area 10234 mm2",
            measurements=[Measurement(name="ctr", value=0.48, unit="ratio")],
        )
    }
    assert (
        check_claim(ProposedClaim(statement="lung area 10234 mm2", evidence_ids=["E1"]), evidence)
        is None
    )
    # within 5 % of a measured value
    assert (
        check_claim(ProposedClaim(statement="CTR is 0.47", evidence_ids=["E1"]), evidence) is None
    )
    why = check_claim(ProposedClaim(statement="CTR is 0.62", evidence_ids=["E1"]), evidence)
    assert why is not None and "0.62" in why


def test_claim_must_cite_existing_successful_evidence():
    evidence = {"E1": ev(1, "x"), "E2": ev(2, "boom", status="error")}
    assert "cites no evidence" in check_claim(
        ProposedClaim(statement="a", evidence_ids=[]), evidence
    )
    assert "E9" in check_claim(ProposedClaim(statement="a", evidence_ids=["E9"]), evidence)
    assert "failed" in check_claim(ProposedClaim(statement="a", evidence_ids=["E2"]), evidence)


def test_evidence_ids_in_the_statement_are_not_numbers():
    evidence = {"E12": ev(12, "normal")}
    assert check_claim(ProposedClaim(statement="see E12", evidence_ids=["E12"]), evidence) is None


def test_contradictions_found_once_per_pair():
    items = [
        ev(1, tool="a", assertions=[Assertion(finding="Effusion", present=True)]),
        ev(2, tool="b", assertions=[Assertion(finding="effusion", present=False)]),
        ev(3, tool="c", assertions=[Assertion(finding="effusion", present=True)]),
        ev(4, tool="d", status="error", assertions=[Assertion(finding="effusion", present=False)]),
    ]
    found = find_contradictions(items)
    assert len(found) == 1 and "E1 (a)" in found[0] and "E2 (b)" in found[0]


def test_review_splits_supported_and_dropped():
    proposal = FinalAnswerArgs(
        answer="x",
        confidence=0.7,
        claims=[
            ProposedClaim(statement="area 5 mm2", evidence_ids=["E1", "E1"]),
            ProposedClaim(statement="area 6 mm2", evidence_ids=["E1"]),
        ],
    )
    r = review(proposal, [ev(1, "area 5 mm2")])
    assert [c.statement for c in r.supported] == ["area 5 mm2"]
    assert r.supported[0].evidence_ids == ["E1"]  # de-duplicated
    assert r.dropped == ["area 6 mm2"] and not r.ok


def test_review_without_claims_asks_for_evidence_or_claims():
    assert "no evidence yet" in review(FinalAnswerArgs(answer="x"), []).problems[0]
    assert "makes no claim" in review(FinalAnswerArgs(answer="x"), [ev(1, "y")]).problems[0]


# ---------------------------------------------------------------- numbers with units, zeros
def test_a_zero_in_the_evidence_supports_only_a_zero():
    # The detector found nothing ("strongest candidate 0.0 noise sd"); "0.01 mm" is invented.
    found_nothing = {"E1": ev(1, "no focal lesion found (strongest candidate 0.0 noise sd)")}
    why = check_claim(ProposedClaim(statement="the lesion measures 0.01 mm", evidence_ids=["E1"]),
                      found_nothing)
    assert why is not None and "0.01" in why
    assert check_claim(ProposedClaim(statement="0 lesions", evidence_ids=["E1"]),
                       found_nothing) is None


def test_a_number_with_a_unit_matches_only_evidence_in_that_unit():
    evidence = {"E1": ev(1, "1 focal lesion found: L1 12 px diameter; image 12 mm from the edge",
                         measurements=[Measurement(name="L1_diameter", value=4.2, unit="mm")])}
    ok = check_claim(ProposedClaim(statement="L1 is 4.2 mm across", evidence_ids=["E1"]),
                     evidence)
    assert ok is None
    assert check_claim(ProposedClaim(statement="L1 is 0.42 cm across", evidence_ids=["E1"]),
                       evidence) is None  # cm converted to mm
    bad = check_claim(ProposedClaim(statement="L1 is 12 mm across", evidence_ids=["E1"]),
                      {"E1": ev(1, "L1 12 px", measurements=[
                          Measurement(name="L1_diameter", value=4.2, unit="mm")])})
    assert bad is not None and "12" in bad  # 12 px is not 12 mm


# ---------------------------------------------------------------- meaning: review sends back
def _lesions(n, side=None):
    return ev(1, f"{n} focal lesions found", tool="detect_lesions",
              assertions=[Assertion(finding="focal lesion", present=n > 0, count=n, side=side)])


def test_review_names_an_answer_that_contradicts_its_evidence():
    proposal = FinalAnswerArgs(answer="No, the kidneys appear to be normal.",
                               claims=[ProposedClaim(statement="76 focal lesions found",
                                                     evidence_ids=["E1"])], confidence=0.9)
    result = review(proposal, [_lesions(76)], "Do the kidneys appear to be normal?")
    assert not result.ok
    assert result.conflicts and "contradicts itself" in result.conflicts[0]
    assert any("make the answer say what the evidence says" in p for p in result.problems)


def test_review_accepts_an_answer_that_agrees_with_its_evidence():
    proposal = FinalAnswerArgs(answer="Yes, there are 2 nodules.",
                               claims=[ProposedClaim(statement="2 focal lesions found",
                                                     evidence_ids=["E1"])])
    result = review(proposal, [_lesions(2)], "Is there a nodule?")
    assert result.ok and result.conflicts == []


@pytest.mark.parametrize("answer, question, expected", [
    ("No, there is no nodule.", "Is there a nodule?", "says there is no lesion"),
    ("No.", "Is there a nodule?", "says there is no lesion"),
    ("The lungs are normal.", "Describe the lungs.", "calls it normal"),
    ("There are three lesions.", "How many lesions?", "counts 3 lesion"),
    ("The nodule is on the right.", "Which side is the nodule on?", "places the lesion on the right"),
])
def test_review_catches_polarity_normality_count_and_side(answer, question, expected):
    proposal = FinalAnswerArgs(answer=answer, claims=[ProposedClaim(
        statement="focal lesions found", evidence_ids=["E1"])])
    result = review(proposal, [_lesions(2, side="left")], question)
    assert any(expected in c for c in result.conflicts), result.conflicts


@pytest.mark.parametrize("text, loops", [
    ("The image is wrong. The image is wrong. The image is wrong. The image is wrong.", True),
    ("The image is taken by the modality of modality of modality of modality of modality", True),
    ("The evidence is that the small bowel is small. The evidence is that the small bowel is "
     "small. The evidence is that the small bowel", True),
    ("Left lung 1200 mm2, right lung 1100 mm2; the left lung is larger.", False),
    ("No, no, no.", False),  # three words: too short to be a loop of runs
    ("Yes.", False),
    ("", False),
])
def test_an_answer_that_repeats_itself_is_a_loop(text, loops):
    from agent.trust.checks import repeats_itself

    assert bool(repeats_itself(text)) == loops


def test_defects_an_answer_that_loops_or_stands_on_pixels_only_on_a_clinical_image():
    from tools.evidence import PIXELS

    look = ev(1, "unknown, 500x677 px; intensity 0 to 255 a.u.", tool="describe_image",
              score=1.0, data={"observes": PIXELS})
    q = "What material is the peripheral hypodensity?"
    said = FinalAnswerArgs(answer="The material is the peripheral hypodensity.", claims=[
        ProposedClaim(statement="peripheral hypodensity", evidence_ids=["E1"])], confidence=0.9)
    clinical = review(said, [look], q, "clinical")
    assert clinical.supported and not clinical.conflicts and not clinical.ok
    (defect,) = clinical.defects
    assert "E1 (describe_image)" in defect and any(defect in p for p in clinical.problems)
    # on a phantom the pixels are the ground truth; without a domain nothing is assumed
    assert review(said, [look], q, "phantom").ok and review(said, [look], q).ok
    # a question about the picture itself is answered by it
    size = said.model_copy(update={"answer": "The image is 500 by 677 pixels."})
    assert review(size, [look], "What is the image size?", "clinical").ok
    # a loop is no defect: it is given once, and says so
    loop = said.model_copy(update={"answer": "The image is wrong. " * 4})
    result = review(loop, [look], "Describe this image.", "phantom")
    assert result.ok and not result.defects and result.answer == "The image is wrong."
    assert result.mended[0].startswith("the answer repeats 'the image is wrong' 4 times")


def test_defects_an_answer_that_stands_only_on_evidence_outside_its_tools_domain():
    """"There is tracheal deviation." from lung areas measured on a flagged JPEG (the 1.5B)."""
    lungs = ev(1, "Outside what this tool was validated for (...): lung areas 132749 px2 right",
               tool="measure_lungs", score=0.4, data={"out_of_domain": True})
    q = "Is there tracheal deviation?"
    said = FinalAnswerArgs(answer="There is tracheal deviation.", claims=[
        ProposedClaim(statement="lung areas measured", evidence_ids=["E1"])], confidence=0.8)
    for domain in ("clinical", "phantom", None):
        result = review(said, [lungs], q, domain)
        assert result.supported and not result.conflicts and not result.ok
        (defect,) = result.defects
        assert defect.startswith("the answer stands only on E1 (measure_lungs), outside what "
                                 "its tool was validated for")
        assert any(p.startswith(defect) for p in result.problems)
    # one cited item from inside its tool's domain carries it
    expert = ev(2, "Answer: no", tool="case_answer", score=0.7,
                data={"yes_no": "no", "question": q})
    no = said.model_copy(update={"answer": "No.", "claims": [
        ProposedClaim(statement="the cases answer no", evidence_ids=["E1", "E2"])]})
    assert review(no, [lungs, expert], q, "clinical").ok
    # a reading of the pixels cited beside it does not carry it on a clinical image
    from tools.evidence import PIXELS

    look = ev(3, "unknown, 500x677 px", tool="describe_image", score=1.0,
              data={"observes": PIXELS})
    both = said.model_copy(update={"claims": [
        ProposedClaim(statement="lung areas measured", evidence_ids=["E1", "E3"])]})
    (defect,) = review(both, [lungs, look], q, "clinical").defects
    assert defect.startswith("the answer stands only on E1 (measure_lungs)")
    assert review(both, [lungs, look], q, "phantom").ok  # there the pixels are ground truth


def test_defects_an_answer_that_stands_only_on_evidence_about_other_topics():
    """"The right rectus muscles are enhanced on the left." from modality/organ/plane heads."""
    from retrievers.heads import about_words

    heads = ev(1, "Trained heads (calibrated probabilities): modality: mr 0.98; organ: head "
                  "1.00; plane: axial 1.00.", tool="classify", score=0.98,
               data={"about": about_words({"modality": ["ct", "mr", "xray"],
                                           "organ": ["abd", "chest", "head"],
                                           "plane": ["axial", "frontal"]}),
                     "probabilities": {"modality": [], "organ": [], "plane": []}})
    q = "Which rectus muscles are enhanced on the left?"
    said = FinalAnswerArgs(answer="The right rectus muscles are enhanced on the left.", claims=[
        ProposedClaim(statement="an MR of the head", evidence_ids=["E1"])], confidence=0.9)
    (defect,) = review(said, [heads], q, "clinical").defects
    assert defect == ("the answer stands only on E1 (classify), which speaks to modality, "
                      "organ, plane, not to what this question asks")
    for asked in ("Is this an MRI?", "What organ system is shown?", "Is this a CT scan?",
                  "Which plane is this image in?", "Was this taken in the axial plane?",
                  "Is this a chest x-ray?", "Is this an image of the brain?"):
        mri = said.model_copy(update={"answer": "It is an MR of the head."})
        assert review(mri, [heads], asked, "clinical").ok, asked
    # beside evidence that answers the question, it is no defect
    expert = ev(2, "Answer: yes", tool="case_answer", score=0.7,
                data={"yes_no": "yes", "question": q})
    both = said.model_copy(update={"answer": "Yes.", "claims": [
        ProposedClaim(statement="the cases answer yes", evidence_ids=["E1", "E2"])]})
    assert review(both, [heads, expert], q, "clinical").ok


@pytest.mark.parametrize("text, once", [
    ("No, no, no, no, no, no", "No."),
    ("The image is wrong. The image is wrong. The image is wrong.", "The image is wrong."),
    ("Yes, the the lesion is large", "Yes, the lesion is large."),
    ("", ""),
])
def test_a_loop_is_given_once(text, once):
    from agent.trust.checks import collapse_repeats

    assert collapse_repeats(text) == once


def test_a_bound_yes_no_whose_sentence_says_the_opposite_is_given_alone():
    """"No, this patient has a skull fracture." under evidence answering this question "no"."""
    q = "Does this patient have a skull fracture?"
    expert = ev(1, "Answer: no (P(yes) = 0.21)", tool="case_answer", score=0.79,
                data={"yes_no": "no", "question": q})
    said = FinalAnswerArgs(answer="No, this patient has a skull fracture.", claims=[
        ProposedClaim(statement="the cases answer no", evidence_ids=["E1"])], confidence=0.8)
    result = review(said, [expert], q, "clinical")
    assert result.ok and result.answer == "No." and not result.conflicts
    assert "contradicted itself" in result.mended[0] and "'no'" in result.mended[0]
    # a loop of the bound word is given once
    looped = said.model_copy(update={"answer": "No, no, no, no, no, no, no, no, no."})
    result = review(looped, [expert], q, "clinical")
    assert result.ok and result.answer == "No."
    # so is one whose sentence says a thing and its negation (SmolLM2 on a real item)
    babble = said.model_copy(update={"answer": (
        "No, a skull fracture is not just a fracture, but a skull fracture is just a "
        "fracture. It is just a")})
    result = review(babble, [expert], q, "clinical")
    assert result.ok and result.answer == "No." and "it says" in result.mended[0]
    # without evidence for that yes/no, the contradiction stands and is sent back
    other = ev(1, "Answer: no", tool="case_answer", data={"yes_no": "no", "question": "Other?"})
    result = review(said, [other], q, "clinical")
    assert not result.ok and result.answer == said.answer
    assert any("contradicts itself" in c for c in result.conflicts)
    # nor is an answer mended whose leading word is not the evidence's
    result = review(said.model_copy(update={"answer": "Yes, there is no skull fracture."}),
                    [expert], q, "clinical")
    assert not result.ok and result.conflicts


def test_a_claim_against_its_evidence_under_a_bound_answer_is_restated_in_its_words():
    """"Right." bound by the detector, with the claim "... on the patient's left side."."""
    q = "Is the lesion on the patient's left or right side?"
    found = _lesions(1, side="right")
    slip = ProposedClaim(statement="Yes, the lesion is on the patient's left side.",
                         evidence_ids=["E1"])
    result = review(FinalAnswerArgs(answer="Right.", claims=[slip]), [found], q, "phantom")
    assert result.ok and result.answer == "Right." and not result.conflicts
    assert result.supported[0].statement == found.summary
    assert "said the opposite of its own evidence" in result.mended[0]
    # an answer that does not open with the evidence's side is sent back, claim and all
    result = review(FinalAnswerArgs(answer="Left.", claims=[slip]), [found], q, "phantom")
    assert not result.ok and result.conflicts and not result.mended
    # a count: "2" is bound, "25" is not that count
    many = _lesions(2, side="left")
    said = ProposedClaim(statement="There are three lesions.", evidence_ids=["E1"])
    assert review(FinalAnswerArgs(answer="2 lesions.", claims=[said]), [many],
                  "How many lesions are there?", "phantom").ok
    assert not review(FinalAnswerArgs(answer="25 lesions.", claims=[said]), [many],
                      "How many lesions are there?", "phantom").ok


def test_the_question_s_own_number_stated_as_a_finding_is_restated_in_the_evidence_s_words():
    """"Yes, there are 5 lymph nodes ..." for "Are there >5 lymph nodes ...?" (a dev item)."""
    q = "Are there >5 lymph nodes located near the stomach?"
    expert = ev(1, "Answer: yes (P(yes) = 0.63, from a model fitted on 468 labelled yes/no "
                "questions)", tool="case_answer", score=0.63, data={"yes_no": "yes",
                                                                 "question": q})
    garbled = "Yes, there are 5 lymph nodes located near the stomach."
    said = FinalAnswerArgs(answer=garbled, claims=[
        ProposedClaim(statement=garbled, evidence_ids=["E1"])], confidence=0.7)
    result = review(said, [expert], q, "clinical")
    assert result.ok and result.answer == "Yes." and not result.dropped
    assert result.supported[0].statement == expert.summary
    assert "question's own 5 as a finding" in result.mended[0]
    assert "'Yes'" in result.mended[1] or "'yes'" in result.mended[1].lower()
    # a right sentence keeps its words; only the claim is restated
    result = review(said.model_copy(update={"answer": "Yes."}), [expert], q, "clinical")
    assert result.ok and result.answer == "Yes." and len(result.mended) == 1
    # a number the question does not state is still an invented finding: dropped
    made_up = said.model_copy(update={"claims": [ProposedClaim(
        statement="There are 7 lymph nodes near the stomach.", evidence_ids=["E1"])]})
    result = review(made_up, [expert], q, "clinical")
    assert not result.ok and result.dropped and not result.mended
    # nor under an answer that does not open with the evidence's yes/no
    result = review(said.model_copy(update={"answer": "No, there are 5 lymph nodes."}),
                    [expert], q, "clinical")
    assert result.dropped and not any("question's own" in m for m in result.mended)
    # nor when the evidence gives no yes/no for this question
    other = ev(1, "Answer: yes", tool="case_answer", data={"yes_no": "yes",
                                                          "question": "Is the liver enlarged?"})
    assert review(said, [other], q, "clinical").dropped


@pytest.mark.parametrize("question,said,given", [
    # the small planner's sentences on real dev items, under the neighbours' yes/no
    ("Are both lungs abnormally inflated?",
     "No, both lungs are not abnormally inflated. The lung is only slightly inflated.",
     "No, both lungs are not abnormally inflated."),
    ("Is there involvement of the temporal lobes?",
     "Yes, there is a link to the temporal lobes.", "Yes."),
    ("Is/Are there portal venous congestion?", "Yes, portal venous congestion is a concern.",
     "Yes."),
    # restating the question, in its words or their forms, adds nothing
    ("Is the pancreas calcified?", "Yes, the pancreas calcifies.",
     "Yes, the pancreas calcifies."),
    ("Is/Are there cardiomegaly?", "No, there is no evidence to support cardiomegaly.",
     "No, there is no evidence to support cardiomegaly."),
    ("Can you see both kidneys in this image?", "Yes, both kidneys are visible.",
     "Yes, both kidneys are visible."),
])
def test_a_sentence_saying_more_than_evidence_that_only_answered_the_question_is_cut(
        question, said, given):
    expert = ev(1, "Answer: yes/no from 7 similar cases", tool="case_answer", score=0.7,
                data={"yes_no": leading(said), "question": question})
    proposal = FinalAnswerArgs(answer=said, claims=[
        ProposedClaim(statement="the similar cases answer so", evidence_ids=["E1"])],
        confidence=0.7)
    result = review(proposal, [expert], question, "clinical")
    assert result.ok and result.answer == given and not result.conflicts
    assert (said == given) == (not any("said more than its evidence" in m
                                       for m in result.mended))


def leading(text):
    return "yes" if text.lower().startswith("yes") else "no"


def test_words_in_the_evidence_may_be_said_and_other_evidence_is_left_alone():
    from agent.trust.agreement import keep_within

    q = "Is the heart enlarged?"
    cited = [ev(1, "Answer: yes; the cardiothoracic ratio is 0.61", tool="case_answer")]
    text, beyond = keep_within("Yes, the cardiothoracic ratio is 0.61.", "Yes", q, cited)
    assert beyond == [] and text == "Yes, the cardiothoracic ratio is 0.61."
    text, beyond = keep_within("Yes. It is enlarged. There is a small effusion.", "Yes", q,
                               cited)
    assert text == "Yes. It is enlarged." and beyond == ["small", "effusion"]
    # a head's class answering an open question: "PA." and nothing the head did not say
    plane = "What is the name of this image's plane?"
    head = ev(1, "Plane: PA (p = 0.93)", tool="case_answer",
              data={"label_answer": "PA", "question": plane})
    proposal = FinalAnswerArgs(answer="PA. The plane's plane is the one you're looking at.",
                               claims=[ProposedClaim(statement="the plane is PA",
                                                     evidence_ids=["E1"])], confidence=0.9)
    assert review(proposal, [head], plane, "clinical").answer == "PA."
    # evidence that did not answer this very question binds nothing: the detector's own
    # words are checked by the meaning and number checks, not cut here
    found = ev(1, "1 focal lesion, 12 mm across", tool="detect_lesions",
               assertions=[Assertion(finding="lesion", present=True, count=1)])
    proposal = FinalAnswerArgs(answer="Yes, one lesion of 12 mm, round and well defined.",
                               claims=[ProposedClaim(statement="one lesion, 12 mm",
                                                     evidence_ids=["E1"])], confidence=0.8)
    assert review(proposal, [found], "Is there a lesion?", "phantom").answer == proposal.answer
