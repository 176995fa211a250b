"""Reading an answer's meaning and holding it to the evidence's assertions."""

from __future__ import annotations

import pytest

from agent.trust.agreement import answer_conflicts, conflicts_with, finding_family, stance_of
from tools.evidence import Assertion, Evidence


def ev(i, *assertions, tool="t", status="ok", **data):
    return Evidence(id=f"E{i}", tool=tool, summary="s", status=status,
                    assertions=list(assertions), data=data)


@pytest.mark.parametrize("finding, family", [
    ("Nodules", "lesion"), ("focal lesion", "lesion"), ("a mass", "lesion"),
    ("Pleural effusion", "effusion"), ("enlarged heart", "cardiomegaly"),
    ("chest", "chest"),  # unknown words stay themselves
])
def test_finding_family(finding, family):
    assert finding_family(finding) == family


@pytest.mark.parametrize("text, question, polarity, normal, sides, count", [
    ("There are 2 nodules in the left lung.", "", "present", None, {"left"}, 2),
    ("No nodules are seen.", "", "absent", None, set(), 0),  # "No nodules" is not a bare "No"
    ("There is a mass on the right.", "", "present", None, {"right"}, None),
    ("Bilateral effusions.", "", "present", None, {"left", "right"}, None),
    ("Yes.", "Is there a pneumothorax?", "present", None, set(), None),
    ("No.", "Is there a pneumothorax?", "absent", None, set(), None),
    ("No.", "Is the heart normal?", None, False, set(), None),
    ("Yes", "Is there an abnormality?", None, False, set(), None),
    ("The study is unremarkable.", "", None, True, set(), None),
    ("The heart is not normal.", "", None, False, set(), None),
    # a comparison with normal is a departure from it (dev: "Are the ventricles smaller than
    # normal?", "Is/Are the heart larger than normal?"): a yes is not "normal"
    ("Yes.", "Are the ventricles smaller than normal?", None, False, set(), None),
    ("No.", "Is the heart larger than normal?", None, True, set(), None),
    ("The heart is larger than normal.", "", None, False, set(), None),
    ("The heart is not larger than normal.", "", None, True, set(), None),
    ("Yes.", "", None, None, set(), None),  # a bare yes/no needs its question
    # a place in the image is not the patient's side; the patient's side named wins
    ("1 focal lesion found: L1 in the lower right of the image (patient's left side).", "",
     "present", None, {"left"}, None),
    ("A nodule in the upper left of the image.", "", "present", None, set(), None),
    ("A nodule in the right lung, upper left of the image.", "", "present", None, {"right"},
     None),
    # a leading "No" answers nothing to an either-or question
    ("No, the lesion is on the patient's left side.",
     "Is the lesion on the patient's left or right side?", "present", None, {"left"}, None),
    # a question in the image's frame is answered with places in the image, not sides
    ("The lesion is in the lower right.", "In which quadrant of the image is the lesion?",
     "present", None, set(), None),
])
def test_stance_of(text, question, polarity, normal, sides, count):
    st = stance_of(text, question)
    assert (st.polarity, st.normal, set(st.sides), st.count) == (polarity, normal, sides, count)


def test_a_no_that_then_calls_it_normal_contradicts_itself():
    st = stance_of("No, the kidneys appear to be normal.", "Do the kidneys appear to be normal?")
    assert "answers no" in st.self_conflict and "normal" in st.self_conflict


def test_failed_and_out_of_domain_evidence_cannot_be_contradicted():
    present = Assertion(finding="lesion", present=True)
    assert conflicts_with("No lesion.", [ev(1, present, status="error")]) == []
    assert conflicts_with("No lesion.", [ev(1, present, out_of_domain=True)]) == []
    assert conflicts_with("No lesion.", [ev(1, present)]) != []


def test_labels_that_are_not_findings_do_not_count_against_normal():
    # A kNN classifier's "chest: present" is not an abnormality.
    chest = ev(1, Assertion(finding="chest", present=True, probability=0.9), tool="classify")
    assert conflicts_with("The chest radiograph is normal.", [chest]) == []
    lesion = ev(2, Assertion(finding="focal lesion", present=True), tool="detect_lesions")
    assert conflicts_with("The chest radiograph is normal.", [chest, lesion])


def test_abnormal_against_evidence_that_found_nothing():
    nothing = ev(1, Assertion(finding="focal lesion", present=False, count=0))
    out = conflicts_with("The scan is abnormal.", [nothing])
    assert out and "calls it abnormal" in out[0]


def test_answer_conflicts_checks_the_answer_and_each_claim():
    lesion = ev(1, Assertion(finding="nodule", present=True, count=1, side="right"))
    out = answer_conflicts("Yes, one nodule on the right.",
                           [("a nodule in the left lung", [lesion])], "Is there a nodule?")
    assert out == ["claim 'a nodule in the left lung' places the lesion on the left, but E1 (t) "
                   "reports the patient's right side"]
    assert answer_conflicts("Yes, one nodule on the right.",
                            [("one nodule, right side", [lesion])], "Is there a nodule?") == []


def test_a_yes_no_answer_against_evidence_that_answered_the_same_question():
    q = "Is this picture abnormal?"
    ev = Evidence(tool="case_answer", summary="Answer: yes (P(yes) = 0.53 ...).", score=0.53,
                  data={"yes_no": "yes", "question": "is this  picture abnormal?"})
    ev.id = "E1"
    (msg,) = conflicts_with("No.", [ev], question=q)
    assert "says no" in msg and "E1 (case_answer) answers yes" in msg
    assert conflicts_with("Yes, it is abnormal.", [ev], question=q) == []
    # evidence about another question, a claim read without the question, failed evidence
    assert conflicts_with("No.", [ev], question="Is there a fracture?") == []
    assert conflicts_with("No.", [ev]) == []
    # a sentence without a leading yes/no is read for its polarity, unless it says it cannot tell
    shift = Evidence(id="E2", tool="case_answer", summary="Answer: no", score=0.63,
                     data={"yes_no": "no", "question": "Is there a midline shift?"})
    (msg,) = conflicts_with("There is a midline shift of the parenchyma.", [shift],
                            question="Is there a midline shift?")
    assert "says yes" in msg and "answers no" in msg
    assert conflicts_with("There is no midline shift.", [shift],
                          question="Is there a midline shift?") == []
    assert conflicts_with("It cannot be determined from this image.", [shift],
                          question="Is there a midline shift?") == []
    ev.status = "error"
    assert conflicts_with("No.", [ev], question=q) == []


def test_the_answer_opens_with_the_count_or_side_good_evidence_asserted():
    from agent.trust.agreement import evidence_lead
    from tools.evidence import Assertion, Measurement

    def lesions(count: int, side: str | None, **data) -> Evidence:
        return Evidence(id="E1", tool="detect_lesions", summary=f"{count} focal lesions found",
                        score=0.9, data=data, assertions=[Assertion(
                            finding="focal lesion", present=count > 0, count=count, side=side)])

    two = lesions(2, "left")
    assert evidence_lead("How many focal lesions are in this image?", [two]) == "2"
    assert evidence_lead("How many lesions are there?", [two]) == "2"
    assert evidence_lead("How many ribs are there?", [two]) is None  # another finding
    assert evidence_lead("How many lesions?", [two, lesions(3, "left")]) is None  # split
    assert evidence_lead("Is the lesion on the patient's left or right side?", [two]) == "Left"
    assert evidence_lead("Is the lesion on the left or right?", [lesions(1, "both")]) is None
    # in the image's frame, left and right are the picture's, not the patient's sides
    assert evidence_lead("Is the lesion in the left or right half of the image?", [two]) is None
    assert evidence_lead("Is the lesion on the left or right?", [lesions(0, None)]) is None
    flagged = lesions(2, "left", out_of_domain=True)
    assert evidence_lead("How many focal lesions are in this image?", [flagged]) is None
    # a bare presence question takes the assertions' present/absent; a qualified one does not
    assert evidence_lead("Is there a focal lesion in this image?", [two]) == "Yes"
    assert evidence_lead("Are there any lesions?", [lesions(0, None)]) == "No"
    assert evidence_lead("Does the image show a lesion?", [two]) == "Yes"
    assert evidence_lead("Is there a lesion in the right lung?", [two]) is None  # a side
    assert evidence_lead("Is there more than one lesion?", [two]) is None  # a number
    assert evidence_lead("Is there a lesion?", [two, lesions(0, None)]) is None  # split
    assert evidence_lead("Is there a focal lesion in this image?", [flagged]) is None
    assert evidence_lead("Is there a fracture?", [two]) is None  # another finding
    yes = Evidence(id="E2", tool="case_answer", summary="Answer: yes", score=0.7,
                   data={"yes_no": "yes", "question": "Is there a mass?"})
    assert evidence_lead("Is there a mass?", [yes]) == "Yes"
    assert evidence_lead("What is the diameter of the largest lesion?", [two]) is None  # none
    measured = two.model_copy(update={
        "measurements": [Measurement(name="L1_diameter", value=13.5, unit="mm"),
                         Measurement(name="L2_diameter", value=7.0, unit="mm")],
        "data": {"lesions": [{"quadrant": "lower right"}, {"quadrant": "upper left"}]}})
    assert evidence_lead("What is the diameter of the largest lesion in mm?",
                         [measured]) == "13.5 mm"
    assert evidence_lead("What is the diameter of the lesion?", [measured]) is None  # which?
    assert evidence_lead("In which quadrant of the image is the largest lesion?",
                         [measured]) == "Lower right"
    assert evidence_lead("In which quadrant of the image is the lesion?", [measured]) is None
    one = measured.model_copy(update={
        "measurements": [Measurement(name="L1_diameter", value=6.2, unit="mm")],
        "data": {"lesions": [{"quadrant": "upper right"}]}})
    assert evidence_lead("How big is the lesion?", [one]) == "6.2 mm"
    assert evidence_lead("In which quadrant of the image is the lesion?", [one]) == "Upper right"


def test_the_evidence_yes_no_is_given_only_when_it_answered_this_question_one_way():
    from agent.trust.agreement import evidence_yes_no

    q = "Is there a midline shift?"
    yes = Evidence(id="E1", tool="case_answer", summary="Answer: yes", score=0.7,
                   data={"yes_no": "yes", "question": "is there a  midline shift?"})
    no = Evidence(id="E2", tool="case_answer", summary="Answer: no", score=0.6,
                  data={"yes_no": "no", "question": q})
    assert evidence_yes_no(q, [yes]) == "yes"
    assert evidence_yes_no(q, [no]) == "no"
    assert evidence_yes_no(q, [yes, no]) is None  # split: the planner weighs it
    assert evidence_yes_no("Is the heart enlarged?", [yes]) is None  # another question
    assert evidence_yes_no("What organ is shown?", [no.model_copy(
        update={"data": {"yes_no": "no", "question": "What organ is shown?"}})]) is None
    assert evidence_yes_no(q, [yes.model_copy(
        update={"data": {**yes.data, "out_of_domain": True}})]) is None
    assert evidence_yes_no(q, [no.model_copy(update={"status": "error"})]) is None
    # a yes/no question with its auxiliary left out is bound to the evidence's word too
    terse = "Any tracheal deviation present?"
    assert evidence_yes_no(terse, [no.model_copy(
        update={"data": {"yes_no": "no", "question": terse}})]) == "no"


def test_a_declined_question_is_unanswerable_unless_cited_evidence_bears_on_it():
    from agent.trust.agreement import unanswerable
    from tools.evidence import Measurement

    q = "Is this image abnormal?"
    declined = Evidence(id="E1", tool="case_answer", summary="No answer: ...", score=0.0,
                        data={"answer": None, "withheld": "no", "question": q})
    look = Evidence(id="E2", tool="describe_image", summary="CT, 512x512 px")
    assert unanswerable(q, [declined, look], [declined]) is declined
    assert unanswerable(q, [declined, look], [look]) is declined  # describes, does not answer
    finding = look.model_copy(update={"id": "E3", "assertions": [
        Assertion(finding="mass", present=True)]})
    assert unanswerable(q, [declined, finding], [finding]) is None
    size = look.model_copy(update={"id": "E4", "measurements": [
        Measurement(name="diameter", value=12.0, unit="mm")]})
    assert unanswerable(q, [declined, size], [size]) is None
    other = Evidence(id="E5", tool="xrv", summary="Answer: yes", score=0.8,
                     data={"yes_no": "yes", "question": q})
    assert unanswerable(q, [declined, other], [other]) is None
    assert unanswerable("Is there a mass?", [declined], [declined]) is None  # not this one
    assert unanswerable(q, [look], [look]) is None  # nothing declined: the usual checks


def test_beside_a_decline_a_reading_of_the_picture_answers_only_what_it_can_bear_on():
    """case_answer is asked first on every clinical image, so it declines beside other tools."""
    from agent.trust.agreement import unanswerable
    from tools.evidence import PIXELS, Box

    def declined(q: str) -> Evidence:
        return Evidence(id="E1", tool="case_answer", summary="None ... asked a similar question",
                        score=0.0, data={"answer": None, "question": q})

    jpeg = Evidence(id="E2", tool="describe_image", summary="unknown, 500x677 px",
                    data={"observes": PIXELS, "modality": "unknown"})
    ct = jpeg.model_copy(update={"summary": "CT, 128x128 px",
                                 "data": {"observes": PIXELS, "modality": "CT"}})
    q = "Is there a rib fracture?"
    assert unanswerable(q, [declined(q), jpeg], [jpeg]) is not None  # "The patient has a lung."
    q = "Describe this image"
    assert unanswerable(q, [declined(q), jpeg], [jpeg]) is None  # the picture was asked for
    q = "What is this?"
    assert unanswerable(q, [declined(q), ct], [ct]) is None  # its DICOM records a CT
    text = jpeg.model_copy(update={"tool": "read_text", "boxes": [
        Box(xyxy=(1, 1, 20, 9), label="R")]})
    q = "Where is the lesion?"
    assert unanswerable(q, [declined(q), text], [text]) is not None  # a text box is no lesion
    lungs = Evidence(id="E3", tool="find", summary="left lung, right lung",
                     boxes=[Box(xyxy=(10, 10, 60, 120), label="left lung")])
    q = "Where are the lungs?"
    assert unanswerable(q, [declined(q), lungs], [lungs]) is None


def test_no_answer_from_the_cases_is_a_decline_too():
    """``case_answer`` with no similar question asked: as the 320 real items showed it."""
    from agent.trust.agreement import declines, unanswerable

    q = "What is going on with this patient?"
    none = Evidence(id="E1", tool="case_answer", score=0.0,
                    summary="None of the 10 most similar library images was asked a similar "
                            "question; the case library cannot answer this.",
                    data={"answer": None, "question": q, "k": 10})
    failed = Evidence(id="E2", tool="find", status="error", summary="bad arguments for find")
    assert declines(none)
    assert unanswerable(q, [none, failed], [none]) is none  # "The patient has a lung."
    assert unanswerable(q, [none, failed], []) is none  # cites nothing at all
    heads = Evidence(id="E3", tool="classify", summary="organ: chest 1.00", assertions=[
        Assertion(finding="organ chest", present=True, probability=1.0)])
    assert unanswerable(q, [none, heads], [heads]) is None  # bears; other checks judge it
    voted = none.model_copy(update={"data": {"answer": "sinusitis", "question": q}})
    assert not declines(voted) and unanswerable(q, [voted], [voted]) is None
    # an answer of None with no question asked is not a decline of this one
    assert not declines(none.model_copy(update={"data": {"answer": None}}))


def test_copying_the_detector_on_a_phantom_is_no_conflict():
    """The phantom suite's laterality and location answers, as the small planner wrote them."""
    lesion = ev(1, Assertion(finding="focal lesion", present=True, count=1, side="left"))
    q = "Is the lesion on the patient's left or right side?"
    said = "No, the lesion is on the patient's left side."
    assert answer_conflicts(said, [(said, [lesion])], q) == []
    wrong = "No, the lesion is on the patient's right side."
    assert answer_conflicts(wrong, [(wrong, [lesion])], q)  # the side is still checked
    q = "In which quadrant of the image is the lesion?"
    assert answer_conflicts("The lesion is in the lower right.",
                            [("The lesion is in the lower right.", [lesion])], q) == []


@pytest.mark.parametrize("answer, question, why", [
    ("No, this is a lateral film.", "Is this a lateral film?", "answers no, then states it"),
    ("No, the trachea is midline.", "Is/Are the trachea midline?", "answers no, then states it"),
    ("Yes, there is no fracture.", "Is there a fracture?", "answers yes, then denies it"),
    # no contradiction: the same polarity, another place, a later clause, a negated question
    ("No, there is no free air.", "Is there free air?", ""),
    ("No, this is a CT, not an MRI.", "Is this an MRI?", ""),
    ("Yes, there is a mass, not in the lung.", "Is there a mass?", ""),
    ("No, the mass is in the right lung.", "Is the mass in the left lung?", ""),
    ("Yes, there is no fracture.", "Is there no fracture?", ""),
    ("No, the lesion is on the left.", "Is the lesion on the right or left?", ""),  # either-or
    # a clause and, in the same sentence, its plain negation (SmolLM2 on a real item)
    ("No, pleural plaques are not just pleural surfaces, but pleural plaques are just pleural "
     "surfaces. They are just pleural plaques.",
     "Would you expect pleural plaques on other pleural surfaces vs just the hemithoraces?",
     "it says 'pleural plaques are not just pleural surfaces' and"),
    ("Yes, the liver isn't enlarged; the liver is enlarged.", "Is the liver enlarged?",
     "it says"),
    # the same words about other things, or a negation of one word only, are no contradiction
    ("Yes, there is a mass, not a cyst.", "Is there a mass?", ""),
    ("Yes, there is a mass in the left lung, there is no mass in the right lung.",
     "Is there a lung mass?", ""),
])
def test_a_yes_no_then_the_question_restated_the_other_way_contradicts_itself(
        answer, question, why):
    """The small planner wrote "No, this is a lateral film." to "Is this a lateral film?"."""
    assert why in stance_of(answer, question).self_conflict
    assert bool(stance_of(answer, question).self_conflict) == bool(why)
    found = conflicts_with(answer, [], question=question)
    assert bool(found) == bool(why)
    # a claim is read through the question's form only, never its yes/no
    assert conflicts_with(answer, [], question=question, as_answer=False) == []


def test_a_reading_of_the_pixels_bears_only_on_questions_about_the_picture():
    from agent.trust.agreement import bears_on, pixels_only
    from tools.evidence import PIXELS

    jpeg = Evidence(id="E1", tool="describe_image", summary="unknown, 500x677 px", score=1.0,
                    data={"observes": PIXELS, "modality": "unknown"})
    text = Evidence(id="E2", tool="read_text", summary="2 text regions: 'L', 'PA'",
                    data={"observes": PIXELS})
    q = "What material is the peripheral hypodensity?"
    assert not bears_on(jpeg, q) and not bears_on(text, q)
    why = pixels_only(q, [jpeg, text])
    assert "E1 (describe_image), E2 (read_text)" in why and "bears on this question" in why
    for about_picture in ("What is the pixel spacing?", "Describe this image.",
                          "What text is written on the film?", "Show the lungs.",
                          "What is the size of the image?"):
        assert bears_on(jpeg, about_picture) and pixels_only(about_picture, [jpeg]) == ""
    # "show" only as a request, not inside a clinical question
    assert pixels_only("Does this image show a fracture?", [jpeg])
    # "describe" only of the picture: "Describe the appendix" asks for a finding (on a blank
    # picture the planner answered it from describe_image's intensities at raw 0.89)
    for about_finding in ("Describe the appendix", "Describe the borders of the lesion."):
        assert not bears_on(jpeg, about_finding) and pixels_only(about_finding, [jpeg])
    for about_picture in ("Can you describe the scan?", "Describe what you see",
                          "Summarize this MRI", "Can you describe?"):
        assert bears_on(jpeg, about_picture)
    # a DICOM's recorded acquisition is a fact about the image
    dicom = jpeg.model_copy(update={"data": {"observes": PIXELS, "modality": "CR"}})
    assert bears_on(dicom, q)
    # anything that is not a reading of the pixels bears; one such item is enough
    finding = ev(3, Assertion(finding="mass", present=True))
    assert bears_on(finding, q) and pixels_only(q, [jpeg, finding]) == ""
    assert pixels_only("", [jpeg]) == "" and pixels_only(q, []) == ""


def test_an_open_label_question_opens_with_the_words_the_heads_answer_gave() -> None:
    from agent.trust.agreement import evidence_lead

    q = "In what plane is this image oriented?"

    def plane(words: str, question: str = q, **data) -> Evidence:
        return Evidence(id="E1", tool="case_answer", summary=f"Answer: {words}.", score=0.8,
                        data={"answer": words, "label_answer": words, "question": question,
                              **data})

    assert evidence_lead(q, [plane("Axial")]) == "Axial"
    assert evidence_lead(q, [plane("Axial"), plane("PA")]) is None  # split
    assert evidence_lead(q, [plane("Axial", question="What plane is the image in?")]) is None
    assert evidence_lead(q, [plane("Axial", out_of_domain=True)]) is None
    voted = Evidence(id="E2", tool="case_answer", summary="Similar cases answer 'Axial'",
                     score=0.5, data={"answer": "Axial", "question": q})
    assert evidence_lead(q, [voted]) is None  # the neighbours' vote binds nothing


def test_an_answer_naming_another_class_than_the_head_gave_contradicts_it() -> None:
    from agent.trust.agreement import conflicts_with

    def head(label: str, words: str, question: str, **data) -> Evidence:
        return Evidence(id="E1", tool="case_answer", summary=f"Answer: {words}.", score=0.9,
                        data={"answer": words, "label_answer": words, "label": label,
                              "question": question, **data})

    q = "Is this a CT or an MRI?"
    ct = head("ct", "CT", q)
    found = conflicts_with("No, this is an MRI.", [ct], question=q)
    assert found and "names modality mr, but E1 (case_answer) gives modality ct" in found[0]
    assert conflicts_with("CT.", [ct], question=q) == []
    assert conflicts_with("It is a CT, not an MRI.", [ct], question=q) == []  # names CT too
    # a description's classes, each against its own task
    d = "Describe this image"
    described = head("ct/head/axial", "Axial CT of the head", d)
    assert conflicts_with("Axial CT of the head.", [described], question=d) == []
    assert conflicts_with("A CT of the brain.", [described], question=d) == []
    found = conflicts_with("An axial CT of the abdomen.", [described], question=d)
    assert len(found) == 1 and "names organ abd" in found[0]
    # the library's words for a class: "PA" is frontal, "Lungs" the chest
    p = "What plane is this film?"
    assert conflicts_with("PA", [head("frontal", "PA", p)], question=p) == []
    assert conflicts_with("Axial.", [head("frontal", "PA", p)], question=p)
    o = "What organ system is shown?"
    assert conflicts_with("Cardiopulmonary.", [head("chest", "Lungs", o)], question=o) == []
    # another question's answer, one flagged outside its domain, or the vote: not held to
    assert conflicts_with("MRI.", [head("ct", "CT", "What modality is this?")], question=q) == []
    assert conflicts_with("MRI.", [head("ct", "CT", q, out_of_domain=True)], question=q) == []
    vote = Evidence(id="E2", tool="case_answer", summary="Similar cases answer 'CT'",
                    data={"answer": "CT", "question": q})
    assert conflicts_with("MRI.", [vote], question=q) == []


def test_report_sentences_speak_only_to_questions_about_reports():
    """Other patients' report sentences are not evidence about this image."""
    from agent.trust.agreement import speaks_to, unrelated_only
    from retrievers.similar import REPORT_WORDS

    ev = Evidence(id="E1", tool="report_lookup", summary="5 reports closest to 'effusion'",
                  data={"about": list(REPORT_WORDS), "topic": "how reports word a finding"})
    assert speaks_to(ev, "How is a pleural effusion usually described in reports?")
    assert not speaks_to(ev, "Is the corpus callosum involved?")
    why = unrelated_only("Is the corpus callosum involved?", [ev])
    assert "E1 (report_lookup)" in why and "how reports word a finding" in why
    assert unrelated_only("What do reports say about effusions?", [ev]) == ""
