"""What a question's wording says about the answer it expects, read the same way everywhere.

A question that opens with an auxiliary verb ("Is there...", "Does the..."), or with one
left out ("Any evidence of hematoma?"), is *closed*: it is answered yes or no, unless it is
a polite request for an open answer ("Can you name the organ captured by this image?",
answered "Brain", not "yes"), or unless it offers
alternatives ("... on the left or the right?"), when it is *either-or* and a leading yes/no
answers nothing. A question about a place "in the image" ("which quadrant of the image") is
in the image's frame: its left and right are places in the picture, not the patient's sides.
A question may also ask for a *judgement of normality* ("Is the heart size normal?", "Is there
gallbladder pathology?", "Is anything wrong in the image?"): whether what is shown is normal,
which only a reading of the findings settles, whatever else (a size, an organ, a modality) it
names. The case library reads such a question as one about abnormality whatever its
neighbouring questions were labelled (``retrievers.question_kinds.read_kind``), and never as a
question about what the image is ("Is this a normal CT?" is not "Is this a CT?").
The case library (which questions its yes/no model answers), calibration (which map applies)
and the meaning check (how an answer is read) all ask these questions; they used to keep
three regular expressions that had drifted apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["QuestionForm", "asks_normality", "is_closed_question", "is_either_or",
           "is_yesno_question"]

_AUXILIARY_START = re.compile(
    r"^\s*(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|shall|may|"
    r"might|must)\b", re.IGNORECASE)
# "can you name / list / tell me / describe ...": the auxiliary asks for an answer, not a yes
# ("Can you tell if...", "Can you see...", "Would you describe the mass as cystic?" stay closed)
_OPEN_REQUEST = re.compile(
    r"^\s*(can|could|would|will)\s+(you|u)\s+(please\s+)?("
    r"name|list|specify|state|tell\s+(me|us)\b(?!\s+(if|whether)\b)|"
    r"(identify|say|explain|show\s+(me|us)|point\s+(out|to))\s+(what|which|where|how|why|who)\b|"
    r"(describe|explain|summari[sz]e)\b(?![^?]*\bas\b))", re.IGNORECASE)
# a yes/no question with its auxiliary left out, as clinicians type them: "Any evidence of
# hematoma?", "Anything abnormal in this image?", "Notice any abnormality in the kidneys?";
# not a request for an opinion ("Any idea what this lesion is?", "Any guesses as to the cause?")
_ELLIPTIC_START = re.compile(
    r"^\s*(any(?!\s+(idea|ideas|clue|clues|guess|guesses|thoughts?)\b)|anything|"
    r"(notice|noticed|see|seen)\s+any(thing)?|(any\s+)?(evidence|signs?)\s+of)\b",
    re.IGNORECASE)
# a clause set before the question ("Besides the mass in the temporal horn, are there other
# enhancements?", "In this image, is there a fracture?"); not one that asks itself ("Where is
# the mass, in the liver?")
_LEADING_CLAUSE = re.compile(
    r"^\s*(?!(what|which|where|when|who|whom|whose|why|how)\b)[^,?]{1,80},\s*(?=\S)",
    re.IGNORECASE)
_EITHER_OR = re.compile(r"\bor\b", re.IGNORECASE)
# Alternatives named right after a presence opening are what might be present, and the
# question asks whether any is: "Is/Are there epidural or subdural hematoma?", "Any evidence
# of epidural or subdural hematoma?" (the dev set answers all three such questions "no"). An
# "or" further on offers a choice about a finding already named: "Is there a lesion on the
# left or right?", "Any mass on the left or the right?".
_PRESENCE_OR = re.compile(
    r"^\s*((is|are)(/(is|are))?\s+there|(any\s+)?(evidence|signs?)\s+of|any|(do|can)\s+(you|we)\s+see"
    r"(\s+any)?)\s+((an?|any)\s+)?([\w-]+\s+){1,2}or\b", re.IGNORECASE)
# ... but not when the second alternative is set against the first: "Are there multiple masses
# or just a single big one?", "Is there appendix normal or abnormal in appearance?" (the dev
# set answers "Just one" and "Normal")
_SET_AGAINST = re.compile(
    r"\b([\w-]+)\s+or\s+(?:(?:just|only|rather|instead|a|an|the|single|one|two|multiple|several)"
    r"\b|(?:ab|non-?|un|in|a)\1\b)", re.IGNORECASE)
# "..., or not?": the alternative is the question's own negation
_OR_NOT = re.compile(r"\bor\s+not\s*[?.!]*\s*$", re.IGNORECASE)
_IMAGE_FRAME = re.compile(r"\b(quadrant|of the image|in the image)\b", re.IGNORECASE)
_THE = r"(?<!\bthe )(?<!\bits )(?<!'s )"
_NORMALITY = re.compile(
    r"\bunremarkable\b|\bwrong\b|\bpatholog(ic|ical|ically)\b|\bhealthy\b|\bdiseased\b|"
    r"\b(abnormalit(y|ies)|patholog(y|ies))\b|"
    # not an adjective inside a finding already named ("the abnormal mass"); "Is this
    # normal?" still asks for a judgement
    + _THE + r"\b(ab)?normal(ly)?\b", re.IGNORECASE)
_NAMED_FINDING = re.compile(
    # a finding already named ("the abnormality", "other abnormalities", "the left renal
    # abnormality"): "Is the abnormality hyperintense?" asks about its signal. The words
    # between are not a verb or a preposition ("Does the image show pathology?" still asks).
    r"\b(the|this|that|these|those|other|its|\w+'s)\s+((?!(show|shows|showing|have|has|had|"
    r"demonstrate|demonstrates|reveal|reveals|contain|contains|display|displays|suggest|"
    r"suggests|depict|depicts|is|are|was|were|be|been|there|any|no|of|in|on|at|for|with|"
    r"within|without)\b)[\w-]+\s+){0,2}(abnormalit(y|ies)|patholog(y|ies))\b", re.IGNORECASE)


def is_closed_question(question: str) -> bool:
    """True for a closed question: answered yes or no, or by one of the alternatives it offers.

    It opens with an auxiliary verb ("Is there...", "Does the..."), or with one left out as
    clinicians type them ("Any evidence of hematoma?", "Anything abnormal in this image?",
    "Notice any abnormality in the kidneys?"), possibly after a clause set before it
    ("Besides the mass in the temporal horn, are there other enhancements?"). Not a polite
    request for an open answer ("Can you name the organ?", "Could you tell me where the mass
    is?", "Can you describe the lesion?"): the auxiliary there asks for the answer itself. On
    the dev set, "Can you name the organ captured by this image?" (answer "Brain") had been
    answered "no" by the yes/no model, and the five yes/no questions of the elliptic and
    leading-clause forms had been read as open.
    """
    q = " ".join((question or "").split())
    if _opens_closed(q):
        return True
    lead = _LEADING_CLAUSE.match(q)
    return lead is not None and _opens_closed(q[lead.end():])


def _opens_closed(q: str) -> bool:
    """The closed opening of ``is_closed_question``, at the start of ``q`` (spaces folded)."""
    if _ELLIPTIC_START.match(q):
        return True
    return bool(_AUXILIARY_START.match(q)) and not _OPEN_REQUEST.match(q)


def is_either_or(question: str) -> bool:
    """True when the question offers alternatives to choose from ("... left or right?").

    Not when its "or" names what might be present right after a presence opening ("Is there
    epidural or subdural hematoma?": yes or no, whether any is), nor when the alternative is
    the question's own negation ("Is there a fracture or not?").
    """
    q = " ".join((question or "").split())
    ors = len(_EITHER_OR.findall(q))
    ors -= bool(_PRESENCE_OR.match(q) and not _SET_AGAINST.search(q)) + bool(_OR_NOT.search(q))
    return ors > 0


def asks_normality(question: str) -> bool:
    """True when the question asks whether something is normal, abnormal or pathological.

    "Is the heart size abnormal?", "Are the ventricles smaller than normal?", "Is there
    gallbladder pathology?", "Is anything wrong in the image?"; not a question about a finding
    it names ("Is the abnormality hyperintense?", "Are there other abnormalities besides the
    mass?"). The VQA-RAD dev set has 81 such yes/no questions, labelled with five categories
    (62 ABN, 12 SIZE, 5 PRES, one each ATTRIB and POS). The case library's yes/no model sees
    the wording and the image's overall appearance but no finding: in the agent's run over
    all 988 items (fold libraries, 4f5b487) it answered 57 of them and was right on 26, where
    the commonest answer of each one's category in the fitting folds was right on 36.
    """
    q = " ".join((question or "").replace("\u2019", "'").split())  # as typed: spaces, quotes
    return bool(_NORMALITY.search(_NAMED_FINDING.sub(" ", q)))


def is_yesno_question(question: str) -> bool:
    """True for a closed question that offers no alternatives: its answer is yes or no."""
    return is_closed_question(question) and not is_either_or(question)


@dataclass(frozen=True)
class QuestionForm:
    """The form of a question, apart from what it asks about.

    Attributes:
        closed: it is answered yes or no, or by an alternative it offers
            (``is_closed_question``).
        either_or: it offers alternatives; a leading yes/no in its answer answers nothing.
        image_frame: it asks for a place in the image; left/right are the image's, not the
            patient's.
    """

    closed: bool = False
    either_or: bool = False
    image_frame: bool = False

    @classmethod
    def of(cls, question: str) -> QuestionForm:
        """Read the form off the question's words."""
        q = question or ""
        return cls(is_closed_question(q), is_either_or(q), bool(_IMAGE_FRAME.search(q)))

    @property
    def yes_no(self) -> bool:
        """A closed question without alternatives: answered yes or no."""
        return self.closed and not self.either_or
