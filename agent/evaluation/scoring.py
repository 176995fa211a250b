"""Grading an answer against the ground truth, by answer type.

The agent answers in words; the grader reads the one thing the question asks for out of them,
and only that: the first yes/no word, the first count, the first size in mm, the first option
named. A reply that names several options is graded by the first it names, so listing every
possibility never scores. Open answers (VQA-RAD / SLAKE / PathVQA open questions) are right
when the normalised reference answer appears in the normalised reply.

Open answers are also scored the two ways the VQA-RAD literature reports (``open_scores``):
normalised exact match (the reply's answer phrase, once articles, punctuation and a trailing
period are dropped, equals the reference) and token recall (the share of the reference's words
found in the reply). The first is strict and the second lenient; the agent answers in
sentences, so the report gives both beside the containment grade above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Grade", "OpenScores", "answer_tokens", "grade", "normalise", "open_scores",
           "parse_count", "parse_mm", "parse_yesno"]

_WORDS = {
    "no": 0, "zero": 0, "none": 0, "one": 1, "single": 1, "a": 1, "an": 1, "two": 2,
    "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
_YES = re.compile(r"\b(yes|present|there is|there are|found|seen|visible|detected)\b")
_NO = re.compile(r"\b(no|not|none|absent|without|negative|0 (?:focal )?lesions?|zero)\b")


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one answer: right or not, what was read, and a number if any."""

    correct: bool
    parsed: str | None
    value: float | None = None


@dataclass(frozen=True)
class OpenScores:
    """An open answer against its reference: exact match of the phrase and token recall (0–1)."""

    exact: bool
    token_recall: float


_ARTICLES = frozenset({"a", "an", "the"})
_ABSTAIN_PREFIX = re.compile(r"^\s*Uncertain \(confidence [0-9.]+\):\s*")
# Lead-ins a sentence answer puts before the phrase that answers: "The answer is CT." -> "CT".
_LEAD_IN = re.compile(r"^(?:(?:yes|no)\s+)?(?:(?:the\s+)?answer\s+is|it\s+is|this\s+is|"
                      r"it\s+s|this\s+s|(?:the\s+)?image\s+(?:is|shows)|there\s+is|"
                      r"there\s+are)\s+")


def states_answer(text: str, abstained: bool) -> bool:
    """Whether a reply gives an answer that can be graded.

    Every reply that did not abstain does, and so does an abstention that still states its
    answer ("Uncertain (confidence 0.30): No. This needs review..."). An abstention that gives
    none ("No offline tool can answer this question: E1 ...", "The round budget ran out...",
    then what the tools found) is a non-answer: never right, though its first word may be "No"
    and the evidence it lists may name the reference's words (before this rule, 10 of 29
    such closed replies on real items were graded as a right "no").
    """
    return not abstained or _ABSTAIN_PREFIX.match(text) is not None


def answer_tokens(text: str) -> list[str]:
    """Words of ``text`` for open-answer scoring: lower case, hyphens joined, no articles.

    ``"X-ray"``, ``"Xray"`` and ``"x ray"`` differ only in spelling; joining hyphenated words
    makes the first two one token (the third stays two: no spelling list is tuned per item).
    """
    t = re.sub(r"(?<=[a-z0-9])-(?=[a-z0-9])", "", text.lower())
    return [w for w in re.sub(r"[^a-z0-9]+", " ", t).split() if w not in _ARTICLES]


def open_scores(text: str, answer: str) -> OpenScores:
    """Normalised exact match and token recall of a reply ``text`` against ``answer``.

    Exact match compares the reference with the reply's first sentence after an abstention
    prefix and a lead-in ("The answer is ...", "It is ...") are dropped; token recall counts
    the reference's tokens (``answer_tokens``) present anywhere in the reply.
    """
    text = _ABSTAIN_PREFIX.sub("", text)
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    phrase = " ".join(answer_tokens(first))
    phrase = _LEAD_IN.sub("", phrase)
    ref = answer_tokens(answer)
    said = set(answer_tokens(text))
    recall = sum(w in said for w in ref) / len(ref) if ref else 0.0
    return OpenScores(bool(ref) and phrase == " ".join(ref), float(recall))


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9.\- ]+", " ", text.lower()).split())


def parse_yesno(text: str) -> str | None:
    """``yes`` / ``no`` read from the first sentence.

    A leading yes/no word decides; else a negation ("there is no lesion", "0 lesions",
    "absent") means no; else a positive finding word means yes.
    """
    first = normalise(re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0])
    m = re.match(r"(yes|no)\b", first)
    if m:
        return m.group(1)
    if _NO.search(first):
        return "no"
    if _YES.search(first) or re.search(r"\b[1-9]\d* (?:focal )?lesions?\b", first):
        return "yes"
    return None


def parse_count(text: str) -> int | None:
    """The first count of lesions/findings, in digits or words ("two lesions" → 2)."""
    t = normalise(text)
    m = re.search(r"\b(\d+|" + "|".join(_WORDS) + r")\s+(?:\w+\s+){0,2}?(?:lesions?|nodules?|"
                  r"masses|mass|findings?|spots?|blobs?)\b", t)
    if m:
        w = m.group(1)
        return int(w) if w.isdigit() else _WORDS[w]
    m = re.search(r"\b\d+\b", t)
    return int(m.group(0)) if m else None


def parse_mm(text: str) -> float | None:
    """The first length in mm (``12.5 mm``, ``12.5mm``, ``1.2 cm`` → 12).

    Without a unit: the first number with a decimal point, else the first number.
    """
    t = text.lower()
    m = re.search(r"(\d+(?:\.\d+)?)\s*(mm|millimet)", t)
    if m:
        return float(m.group(1))
    m = re.search(r"(\d+(?:\.\d+)?)\s*cm\b", t)
    if m:
        return float(m.group(1)) * 10.0
    m = re.search(r"\b\d+\.\d+\b", t) or re.search(r"\b\d+\b", t)
    return float(m.group(0)) if m else None


def _first_option(text: str, options: list[str]) -> str | None:
    t = normalise(text)
    # "the patient's left" answers a laterality question even after "the upper right".
    side = re.search(r"\bpatient s (left|right)\b", t)
    if side and side.group(1) in [normalise(o) for o in options]:
        return next(o for o in options if normalise(o) == side.group(1))
    hits = []
    for opt in options:
        m = re.search(r"\b" + re.escape(normalise(opt)) + r"\b", t)
        if m:
            hits.append((m.start(), -len(opt), opt))
    return min(hits)[2] if hits else None


def _letter(text: str, n_options: int) -> int | None:
    letters = "abcdefgh"[:n_options]
    m = re.search(r"(?:^|\b(?:answer|option)\s*(?:is)?\s*:?\s*|\()([" + letters + r"])\b[\).:]?",
                  text.strip().lower())
    return letters.index(m.group(1)) if m else None


def grade(
    text: str, answer: str, answer_type: str, *, options: list[str] | None = None,
    tolerance: float | None = None,
) -> Grade:
    """Grade ``text`` against ``answer``.

    ``answer_type``: ``yesno``, ``count``, ``number`` (within ``tolerance``, default 10 %),
    ``choice`` (one of ``options``; for multiple choice the answer may be a letter ``A``–``H``
    or the option's text), or ``open``.
    """
    options = options or []
    # An abstention keeps the answer after its prefix; grade the answer, not the prefix's number.
    text = re.sub(r"^\s*Uncertain \(confidence [0-9.]+\):\s*", "", text)
    if answer_type == "yesno":
        got = parse_yesno(text)
        return Grade(got == normalise(answer), got)
    if answer_type == "count":
        n = parse_count(text)
        return Grade(n is not None and n == int(float(answer)), None if n is None else str(n),
                     None if n is None else float(n))
    if answer_type == "number":
        v = parse_mm(text)
        truth = float(answer)
        tol = tolerance if tolerance is not None else 0.1 * abs(truth)
        return Grade(v is not None and abs(v - truth) <= tol, None if v is None else f"{v:g}", v)
    if answer_type == "choice":
        want = answer.strip()
        if len(want) == 1 and want.upper() in "ABCDEFGH" and options:
            want = options["ABCDEFGH".index(want.upper())]
        got = _first_option(text, options)
        if got is None and options:
            i = _letter(text, len(options))
            got = options[i] if i is not None else None
        return Grade(got is not None and normalise(got) == normalise(want), got)
    ref = normalise(answer)
    t = normalise(text)
    if ref in ("yes", "no"):
        got = parse_yesno(text)
        return Grade(got == ref, got)
    return Grade(bool(ref) and re.search(r"\b" + re.escape(ref) + r"\b", t) is not None,
                 t[:80])
