"""Combining confidence signals into one number.

The planner's verbalised confidence alone is badly over-confident in small and medical models,
so it is pooled with the tools' own scores (mask quality, retrieval similarity, classifier
probability) and, when several answers were sampled, their agreement (self-consistency: the
share of samples that gave this answer) in log-odds space, then penalised for contradictions
and dropped claims. The result goes through a calibration map (``agent.trust.calibration``, fitted
on held-out data; identity until one is).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from tools.question_form import is_yesno_question

_EPS = 1e-4
# No single signal may claim more than this before calibration: a deterministic tool's score
# of 1.0 says its numbers are exact, not that the planner's reading of them is right.
_SIGNAL_RANGE = (0.05, 0.95)


def logit(p: float) -> float:
    """Log-odds of ``p``, clipped away from 0 and 1."""
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    """Inverse of ``logit``."""
    return 1.0 / (1.0 + math.exp(-x))


_ASKS_NUMBER = re.compile(
    r"^\s*(how (many|much|big|large|long|wide|thick)|what (is|was|are) the (size|diameter|"
    r"length|width|number|count|volume|area|density|mean)|what size)\b", re.I)
_ASKS_SIDE = re.compile(r"\b(left or (the )?right|right or (the )?left|which side)\b", re.I)
_ASKS_WHERE = re.compile(r"^\s*(where|in which (quadrant|part|region|lobe|segment))\b", re.I)
_NUMBER_WORDS = r"\b(\d+(\.\d+)?|no|none|zero|one|two|three|four|five|six|seven|eight|nine|ten)\b"
_YESNO_WORDS = r"\b(yes|no|not|none|absent|present|there (is|are)|normal|negative|positive)\b"
_FITS, _MISFITS = 0.8, 0.15


def answer_form_score(question: str, answer: str) -> float | None:
    """Whether the answer has the form the question asks for, as a signal in [0, 1].

    A question that asks for a number ("how many", "what is the diameter") answered without
    one, a yes/no question answered with neither, a left-or-right question without a side, a
    "where" question without a place: such an answer has not answered, whatever else it says
    (a small planner often restates the evidence without the one thing asked). 0.8 when the
    form fits, 0.15 when it does not, None when the question's form is not recognised.
    """
    a = answer.lower()

    def has(pattern: str) -> bool:
        return re.search(pattern, a) is not None

    if _ASKS_NUMBER.search(question):
        return _FITS if has(_NUMBER_WORDS) else _MISFITS
    if _ASKS_SIDE.search(question):
        return _FITS if has(r"\b(left|right)\b") else _MISFITS
    if _ASKS_WHERE.search(question):
        return _FITS if has(r"\b(upper|lower|left|right|anterior|posterior|central|apex|base)"
                            r"\b") else _MISFITS
    if is_yesno_question(question):  # not "Is this a CT or an MRI?": "CT" answers that
        return _FITS if has(_YESNO_WORDS) else _MISFITS
    return None


_NEGATIVE = re.compile(r"\b(no|not|none|absent|negative|without)\b", re.I)
_QUADRANT = re.compile(r"\b(upper|lower)[ -](left|right)\b", re.I)
_WORD = re.compile(r"[a-z0-9]+")


def answer_key(question: str, answer: str) -> str:
    """What an answer says, reduced to what the question asks for, so two answers compare.

    A number question keys on the first number (ids such as ``E1`` left out), a left-or-right
    question on the side named first, a "where" question on the image quadrant (else the
    place words), a yes/no question on its polarity; any other question on the answer's
    words. Self-consistency counts sampled answers whose keys match.
    """
    a = answer.lower()
    if _ASKS_NUMBER.search(question):
        nums = _NUM.findall(_ID.sub(" ", answer))
        if nums:
            return f"number:{float(nums[0]):g}"
        words = re.search(_NUMBER_WORDS, a)
        return f"number:{words[0]}" if words else "number:?"
    if _ASKS_SIDE.search(question):
        side = re.search(r"\b(left|right)\b", a)
        return f"side:{side[0]}" if side else "side:?"
    if _ASKS_WHERE.search(question):
        quad = _QUADRANT.search(a)
        if quad:
            return f"where:{quad[1]} {quad[2]}"
        places = re.findall(r"\b(upper|lower|left|right|anterior|posterior|central|apex|base)\b",
                            a)
        return "where:" + " ".join(sorted(set(places)))
    if is_yesno_question(question):
        return "yesno:no" if _NEGATIVE.search(a) else "yesno:yes"
    return "text:" + " ".join(sorted(set(_WORD.findall(a))))


def agreement_share(question: str, answer: str, samples: Sequence[str]) -> float | None:
    """Self-consistency: the share of ``[answer, *samples]`` that says what ``answer`` says.

    None when there are no samples (nothing to agree with).
    """
    if not samples:
        return None
    key = answer_key(question, answer)
    return (1 + sum(answer_key(question, s) == key for s in samples)) / (1 + len(samples))


_ID = re.compile(r"\b(?:[A-Z]\d+|img-[0-9a-f]+)\b")
_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_SIDE = re.compile(r"\bpatient'?s (left|right)\b", re.I)


def evidence_consistency(answer: str, evidence: Sequence[str]) -> float | None:
    """Whether the facts the answer states are the ones its evidence states, as a signal.

    The checkable facts are the numbers in the answer (ids such as ``E1``, ``L2`` left out) and
    the patient's side it names. Each must appear in the cited evidence text (a number within
    5 %). A small planner that reads "0 lesions" and answers "1", or "patient's right" and
    answers "left", is caught here even when its claims were worded safely: 0.15 when any fact
    is contradicted, 0.85 when every fact is found, None when the answer states nothing
    checkable.
    """
    text = " ".join(evidence)
    pool = [float(x) for x in _NUM.findall(_ID.sub(" ", text))]
    nums = [float(x) for x in _NUM.findall(_ID.sub(" ", answer))]
    sides = {m.lower() for m in _SIDE.findall(answer)}
    said = {m.lower() for m in _SIDE.findall(text)}
    if not nums and not sides:
        return None
    ok_nums = all(any(abs(x - y) <= max(0.05 * abs(y), 0.051) for y in pool) for x in nums)
    ok_sides = not sides or (bool(said) and sides <= said)
    return 0.85 if ok_nums and ok_sides else 0.15


def combine_confidence(
    verbal: float | None,
    tool_scores: Sequence[float],
    *,
    contradictions: int = 0,
    dropped_claims: int = 0,
    verbal_weight: float = 0.4,
    agreement: float | None = None,
    calibrate: Callable[[float], float] | None = None,
) -> float:
    """One confidence in [0, 1] from the planner's estimate and the tools' scores.

    A weighted mean of log-odds (the planner weighs ``verbal_weight``, the tools share the
    rest; each signal clipped to [0.05, 0.95]), shrunk toward 0.5 by each contradiction and
    each claim that had to be dropped. ``agreement`` (self-consistency across sampled answers,
    in [0, 1]) counts as one more tool-like signal.
    """
    lo, hi = _SIGNAL_RANGE

    def clip(p: float) -> float:
        return min(max(p, lo), hi)

    terms: list[tuple[float, float]] = []
    if verbal is not None:
        terms.append((verbal_weight, logit(clip(verbal))))
    others = [*tool_scores, *([agreement] if agreement is not None else [])]
    if others:
        w = (1 - verbal_weight) if verbal is not None else 1.0
        terms.extend((w / len(others), logit(clip(s))) for s in others)
    if not terms:
        return 0.5
    z = sum(w * x for w, x in terms) / sum(w for w, _ in terms)
    z *= 0.5**contradictions * 0.75**dropped_claims
    p = sigmoid(z)
    return float(min(max(calibrate(p) if calibrate else p, 0.0), 1.0))
