"""The one reading of a question's form that the library, calibration and rethink share."""

from __future__ import annotations

import pytest

from agent.trust.calibration import CLOSED, OPEN, question_form
from retrievers.case_answers import is_yesno_question as library_reads_yes_no
from tools.question_form import (
    QuestionForm,
    asks_normality,
    is_closed_question,
    is_either_or,
    is_yesno_question,
)


@pytest.mark.parametrize("question, closed, either_or, frame", [
    ("Is there a pneumothorax?", True, False, False),
    ("Is/Are the kidneys normal?", True, False, False),
    ("  would you expect plaques elsewhere?", True, False, False),
    ("Is the lesion on the patient's left or right side?", True, True, False),
    ("In which quadrant of the image is the lesion?", False, False, True),
    ("Where is the mass in the image?", False, False, True),
    ("What is the organ?", False, False, False),
    ("Islands of what?", False, False, False),  # "Is" only as a whole word
    # a polite request asks for the answer itself, not a yes (the dev set's "Can you name the
    # organ captured by this image?" is answered "Brain")
    ("Can you name the organ captured by this image?", False, False, False),
    ("Could you please tell me where the mass is?", False, False, False),
    ("Can you describe the lesion?", False, False, False),
    ("Could you identify which lobe is affected?", False, False, False),
    ("Can you list the findings?", False, False, False),
    # ... while these still ask whether
    ("Can you tell me if there is a fracture?", True, False, False),
    ("Can you tell whether the heart is enlarged?", True, False, False),
    ("Would you describe the mass as cystic?", True, False, False),
    ("Can you see all of the ribs on the left side?", True, False, False),
    ("Can you identify the appendix?", True, False, False),
    # the auxiliary left out, as clinicians type (dev: all four answered yes or no)
    ("Anything abnormal in this image?", True, False, False),
    ("Notice any abnormality in the kidneys?", True, False, False),
    ("Any tracheal deviation present?", True, False, False),
    ("Evidence of a pneumothorax?", True, False, False),
    ("Any mass on the left or the right?", True, True, False),
    # alternatives right after a presence opening: whether any is present (dev: all "no")
    ("Is/Are there epidural or subdural hematoma?", True, False, False),
    ("Any evidence of epidural or subdural hematoma?", True, False, False),
    ("Are there epidural or subdural bleeds as well?", True, False, False),
    ("Do you see any hemorrhage or edema?", True, False, False),
    ("Is there a fracture or not?", True, False, False),
    # ... but a choice when the "or" is past the finding, or sets one against the other
    ("Is there a lesion on the left or right?", True, True, False),
    ("Is there epidural or subdural hematoma on the left or right?", True, True, False),
    ("Are there multiple masses or just a single big one?", True, True, False),
    ("Is there appendix normal or abnormal in appearance?", True, True, False),
    ("Is this a CT or an MRI?", True, True, False),
    ("Anyway, what is shown?", False, False, False),  # "any" only as a whole word
    # a request for an opinion, not a yes/no question
    ("Any idea what this lesion is?", False, False, False),
    ("Any guesses as to the cause?", False, False, False),
    # a clause set before the question
    ("Besides the mass in the temporal horn, are there other enhancements?", True, False,
     False),
    ("In this image, can you name the organ?", False, False, False),
    ("Where is the mass, is it in the liver?", False, False, False),  # the clause asks
    ("Given the history of trauma, what is the finding?", False, False, False),
    ("", False, False, False),
])
def test_the_form_of_a_question(question, closed, either_or, frame):
    form = QuestionForm.of(question)
    assert (form.closed, form.either_or, form.image_frame) == (closed, either_or, frame)
    assert is_closed_question(question) == closed and is_either_or(question) == either_or
    assert form.yes_no == (closed and not either_or) == is_yesno_question(question)
    # calibration's strata and the library's yes/no questions read the same form
    assert question_form(question) == (CLOSED if closed else OPEN)
    assert library_reads_yes_no(question) == form.yes_no


@pytest.mark.parametrize("question, normality", [
    ("Is the heart size abnormal?", True),  # dev: labelled SIZE
    ("Are the ventricles smaller than normal?", True),
    ("Is there gallbladder pathology?", True),  # dev: labelled ABN and PRES alike
    ("Is the opacity near the left lung apex pathologic?", True),
    ("Is anything wrong in the image?", True),
    ("Is this a normal chest x-ray?", True),
    ("Are there abnormalities in the kidneys?", True),
    ("Is the mediastinum unremarkable?", True),
    ("Is there a mass in the liver?", False),
    ("Is the heart enlarged?", False),  # a finding named: the kind its neighbours give
    ("Is this an MRI?", False),
    ("Is the abnormally dense region in the left lobe?", False),  # where: a known finding
    ("Paranormal?", False),  # a whole word only
    # a finding already named: its signal, its place, what else there is
    ("Is the abnormality hyper intense?", False),  # dev: labelled COLOR
    ("Are there other abnormalities besides the mass in the temporal horn?", False),
    ("Is the pathology on the left?", False),
    ("Is this abnormality benign?", False),
    ("Is this normal?", True),  # "this" a pronoun: the judgement itself
    ("Is this normal gallbladder finding?", True),  # dev: labelled ABN
    ("Is the left renal abnormality a cyst?", False),  # named, with words between
    ("Is the liver pathology benign?", False),
    ("Does the image show pathology?", True),  # a verb between: still asked
    ("Is the kidney diseased?", True),
    ("Does the liver look healthy?", True),
    ("Is the  abnormality  hyperintense?", False),  # as typed: doubled spaces
    ("Is the lesion\u2019s pathology benign?", False),  # and a typographic apostrophe
    ("Is there pathology of the gallbladder?", True),
    ("Are there any abnormalities seen in the spleen?", True),
])
def test_a_question_about_normality_is_read_as_one(question, normality):
    assert asks_normality(question) is normality
