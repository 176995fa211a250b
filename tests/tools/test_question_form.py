"""The one reading of a question's form that the library, calibration and rethink share."""

from __future__ import annotations

import pytest

from agent.trust.calibration import CLOSED, OPEN, question_form
from retrievers.case_answers import is_yesno_question as library_reads_yes_no
from tools.question_form import QuestionForm, is_either_or, is_yesno_question, opens_with_auxiliary


@pytest.mark.parametrize("question, closed, either_or, frame", [
    ("Is there a pneumothorax?", True, False, False),
    ("Is/Are the kidneys normal?", True, False, False),
    ("  would you expect plaques elsewhere?", True, False, False),
    ("Is the lesion on the patient's left or right side?", True, True, False),
    ("In which quadrant of the image is the lesion?", False, False, True),
    ("Where is the mass in the image?", False, False, True),
    ("What is the organ?", False, False, False),
    ("Islands of what?", False, False, False),  # "Is" only as a whole word
    ("", False, False, False),
])
def test_the_form_of_a_question(question, closed, either_or, frame):
    form = QuestionForm.of(question)
    assert (form.closed, form.either_or, form.image_frame) == (closed, either_or, frame)
    assert opens_with_auxiliary(question) == closed and is_either_or(question) == either_or
    assert form.yes_no == (closed and not either_or) == is_yesno_question(question)
    # calibration's strata and the library's yes/no questions read the same form
    assert question_form(question) == (CLOSED if closed else OPEN)
    assert library_reads_yes_no(question) == form.yes_no
