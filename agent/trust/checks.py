"""What *rethink* checks: whether each claim is backed by evidence, in numbers and in meaning.

Pure functions over the proposal and the evidence list, so the rules are testable without a
graph. A claim is supported when it cites at least one existing, successful evidence item and
every number it states appears in the cited evidence (within a small tolerance; a number with a
unit only matches evidence numbers in that unit, and nothing but zero matches a zero): a small
planner that invents "12 mm" is caught here, not by trusting it. The answer and its claims must
also mean what the cited evidence asserts (``agent.trust.agreement``: present/absent, normal,
side, count); a conflict sends the planner back with the conflict named, and an answer that
still conflicts when the budget is spent abstains. So does an answer no reader can use: on
clinical images, one that rests only on readings of the pixels. Five faults of a small planner's
sentences are mended rather than sent back, because what it says is still the evidence's: a loop
("No, no, no, ...") is given once; a sentence whose leading yes/no is the one the evidence gave
but whose rest says the opposite ("No, this patient has a skull fracture.") is given as that
yes/no alone; a sentence saying more than evidence that only answered the question (its yes/no,
a head's class) holds is cut, with those after it ("No, both lungs are not abnormally inflated.
The lung is only slightly inflated." keeps its first sentence); and under an answer that opens
with what the evidence gives (its yes/no, count or side), a claim saying the opposite of its own
evidence is restated in the evidence's words, and so is a claim whose only unsupported numbers
are the yes/no question's own ("Yes, there are 5 lymph nodes." for "Are there >5 lymph nodes?").
Each mend is noted (``ReviewResult.mended``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.answer import Claim, FinalAnswerArgs, ProposedClaim
from agent.trust.agreement import (
    answer_conflicts,
    answered_lead,
    conflicts_with,
    evidence_lead,
    evidence_yes_no,
    keep_within,
    leading_yes_no,
    outside_only,
    pixels_only,
    stance_of,
    unrelated_only,
)
from agent.trust.calibration import CLINICAL
from tools.evidence import Evidence

_NUMBER = re.compile(r"(?<![\w.])(?<!\w-)[-+]?\d+(?:\.\d+)?")
_REL_TOL = 0.05


@dataclass
class ReviewResult:
    """The outcome of checking a proposal."""

    supported: list[Claim] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    # The answer or a claim saying the opposite of what its cited evidence asserts.
    conflicts: list[str] = field(default_factory=list)
    # Why the answer cannot be used even where nothing contradicts it (it stands on nothing
    # that bears on the question).
    defects: list[str] = field(default_factory=list)
    # The answer as it is given (``answer``, once mended) and what was mended.
    answer: str = ""
    mended: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every claim is supported and there is at least one."""
        return not self.problems and bool(self.supported)


def numbers_in(text: str) -> list[float]:
    """The numbers written in ``text`` (integers and decimals)."""
    return [float(m) for m in _NUMBER.findall(text)]


# Units a stated number can carry, and the factor to the unit compared (mm, mm², HU, %).
_UNITS = {"mm": ("mm", 1.0), "cm": ("mm", 10.0), "mm2": ("mm2", 1.0), "mm²": ("mm2", 1.0),
          "cm2": ("mm2", 100.0), "cm²": ("mm2", 100.0), "hu": ("hu", 1.0), "%": ("%", 1.0),
          "px": ("px", 1.0), "pixels": ("px", 1.0)}
_WITH_UNIT = re.compile(r"(?<![\w.])(?<!\w-)([-+]?\d+(?:\.\d+)?)\s*(mm²|mm2|mm|cm²|cm2|cm|hu|%|px|"
                        r"pixels)(?![\w²])", re.IGNORECASE)


def numbers_with_units(text: str) -> list[tuple[float, str]]:
    """The numbers of ``text`` that carry a unit, converted (cm -> mm): ``(value, unit)``."""
    out = []
    for value, unit in _WITH_UNIT.findall(text):
        base, factor = _UNITS[unit.lower()]
        out.append((float(value) * factor, base))
    return out


def _evidence_units(ev: Evidence) -> list[tuple[float, str]]:
    vals = numbers_with_units(ev.summary)
    for m in ev.measurements:
        unit = _UNITS.get(m.unit.lower().replace("^2", "2"))
        if unit is not None:
            vals.append((m.value * unit[1], unit[0]))
    return vals


def _evidence_numbers(ev: Evidence) -> list[float]:
    vals = numbers_in(ev.summary)
    for m in ev.measurements:
        vals.append(m.value)
    for b in ev.boxes:
        vals.extend(b.xyxy)
    for a in ev.assertions:
        if a.probability is not None:
            vals.extend([a.probability, a.probability * 100])
    return vals


def _matches(x: float, pool: Sequence[float]) -> bool:
    # Rounding slack for non-zero values; a zero in the evidence ("0.0 noise sd") supports
    # only a zero, not "0.01 mm".
    return any(abs(x - y) <= (max(_REL_TOL * abs(y), 0.051) if y else 1e-9) for y in pool)


def check_claim(claim: ProposedClaim, evidence: dict[str, Evidence]) -> str | None:
    """Why ``claim`` is not supported by ``evidence``, or None when it is."""
    label = f"claim {claim.statement[:80]!r}"
    if not claim.evidence_ids:
        return f"{label} cites no evidence"
    missing = [i for i in claim.evidence_ids if i not in evidence]
    if missing:
        return f"{label} cites {', '.join(missing)}, which do not exist"
    failed = [i for i in claim.evidence_ids if evidence[i].status != "ok"]
    if failed:
        return f"{label} cites failed tool calls {', '.join(failed)}"
    unsupported = _unsupported_numbers(claim.statement,
                                       [evidence[i] for i in claim.evidence_ids])
    if unsupported:
        nums = ", ".join(f"{x:g}" for x in unsupported)
        cited = ", ".join(claim.evidence_ids)
        return f"{label} states {nums}, which {cited} do not contain"
    return None


def _unsupported_numbers(statement: str, cited: Sequence[Evidence]) -> list[float]:
    """The numbers ``statement`` gives that the ``cited`` evidence does not contain."""
    pool: list[float] = []
    units: list[tuple[float, str]] = []
    for ev in cited:
        pool.extend(_evidence_numbers(ev))
        units.extend(_evidence_units(ev))
    # Evidence ids and image ids contain digits of their own; ignore those.
    text = re.sub(r"\b(E\d+|img-[0-9a-f]+)\b", "", statement)
    unsupported = [x for x in numbers_in(_WITH_UNIT.sub(" ", text)) if not _matches(x, pool)]
    for value, unit in numbers_with_units(text):
        same = [v for v, u in units if u == unit]
        if not _matches(value, same if same else pool):
            unsupported.append(value)
    return unsupported


def _question_numbers_as_fact(claim: ProposedClaim, by_id: dict[str, Evidence], question: str,
                              answer: str) -> list[float]:
    """The question's own numbers, when they are all that keeps ``claim`` from its evidence.

    Only under an answer that opens with the yes/no its cited evidence gives this yes/no
    question ("Are there >5 lymph nodes near the stomach?", an answer model's "yes"): the
    small planner then restates the question as a fact, and garbles it ("Yes, there are 5
    lymph nodes located near the stomach."). The number is the question's, not a reading,
    so the claim cannot stand; but neither is it a reading that goes against the evidence,
    so the evidence's own words stand in for it (``review``). Left alone, the dropped claim
    made the agent abstain on an answer its evidence gives. Empty otherwise.
    """
    evs = [by_id.get(i) for i in claim.evidence_ids]
    cited = [e for e in evs if e is not None and e.status == "ok"]
    if not question.strip() or not cited or len(cited) != len(evs):
        return []
    bound = evidence_yes_no(question, cited)
    if bound is None or leading_yes_no(answer) != bound:
        return []
    stray = _unsupported_numbers(claim.statement, cited)
    asked = numbers_in(question)
    return stray if stray and all(_matches(x, asked) for x in stray) else []


_WORD = re.compile(r"[a-z0-9']+")


def _non_overlapping(words: list[str], gram: tuple[str, ...]) -> int:
    n, i, times = len(gram), 0, 0
    while i + n <= len(words):
        if tuple(words[i:i + n]) == gram:
            times, i = times + 1, i + n
        else:
            i += 1
    return times


def repeats_itself(text: str) -> str:
    """Why ``text`` is a loop rather than an answer ("" when it is not).

    A run of two to six words said three or more times (not overlapping) that makes up half
    the text: the small planner wrote "The image is wrong. The image is wrong. ..." and "The
    image is taken by the modality of modality of modality ...". The run named is the one
    that covers the most words.
    """
    words = _WORD.findall(text.lower())
    best: tuple[int, int, tuple[str, ...]] = (0, 0, ())
    for n in range(2, 7):
        for gram in sorted({tuple(words[i:i + n]) for i in range(len(words) - n + 1)}):
            times = _non_overlapping(words, gram)
            if times >= 3 and times * n > best[0]:
                best = (times * n, times, gram)
    covered, times, gram = best
    if times and covered >= len(words) / 2:
        return f"the answer repeats {' '.join(gram)!r} {times} times instead of answering"
    return ""


_TOKEN = re.compile(r"[A-Za-z0-9']+[^A-Za-z0-9']*")


def collapse_repeats(text: str) -> str:
    """``text`` with every run of one to six words said twice in a row kept once.

    "No, no, no, no" becomes "No."; "The image is wrong. The image is wrong." becomes "The
    image is wrong."
    """
    lead = re.match(r"[^A-Za-z0-9']*", text)
    toks = _TOKEN.findall(text)
    words = [re.sub(r"[^a-z0-9']", "", t.lower()) for t in toks]
    changed = True
    while changed:
        changed = False
        for n in range(1, 7):
            i = 0
            while i + 2 * n <= len(words):
                if words[i:i + n] == words[i + n:i + 2 * n]:
                    del words[i + n:i + 2 * n], toks[i + n:i + 2 * n]
                    changed = True
                else:
                    i += 1
    out = re.sub(r"[\s,;:-]+$", "", ((lead.group(0) if lead else "") + "".join(toks)).strip())
    return out if not out or out.endswith((".", "!", "?")) else out + "."


def _mend(answer: str, question: str, cited: Sequence[Evidence]) -> tuple[str, list[str]]:
    """The answer as it is given, and what was mended (see the module docstring)."""
    mended: list[str] = []
    loop = repeats_itself(answer)
    if loop:
        answer = collapse_repeats(answer)
        mended.append(f"{loop}; given once: {answer!r}")
    bound = evidence_yes_no(question, cited) if question.strip() else None
    lead = leading_yes_no(answer)
    conflict = stance_of(answer, question).self_conflict if bound and lead == bound else ""
    if conflict:
        answer = f"{bound.capitalize()}."  # type: ignore[union-attr]
        mended.append(f"the answer contradicted itself ({conflict}); its {bound!r}, which the "
                      f"evidence gives, is kept alone")
    given = answered_lead(question, cited) if question.strip() else None
    if given is not None and _opens_with(answer, given):
        kept, beyond = keep_within(answer, given, question, cited)
        if beyond:
            mended.append(f"the answer said more than its evidence ({', '.join(beyond)}: "
                          f"neither the question nor the evidence holds it); given as "
                          f"{kept!r}")
            answer = kept
    return answer, mended


def _opens_with(answer: str, lead: str) -> bool:
    """Whether ``answer`` opens with ``lead`` as a word ("2 lesions", not "25 lesions")."""
    text = answer.strip().lower()
    return text.startswith(lead.lower()) and not text[len(lead):len(lead) + 1].isalnum()


def _restate_claims(result: ReviewResult, by_id: dict[str, Evidence], question: str,
                    cited: Sequence[Evidence]) -> list[str]:
    """Claims that contradict their own evidence under an answer bound to that evidence.

    When the answer opens with what the evidence gives this question (``evidence_lead``: the
    grammar bound it there), a claim whose own words say the opposite of the evidence it
    cites (the small planner's "Yes, the lesion is on the patient's left side." under
    "Right." and a detector reporting the right side) is a slip of the pen, not a reading:
    the cited evidence's own summary stands in for it, and the answer notes the mend. Left
    alone, the claim made the agent abstain on an answer its evidence supports.
    """
    lead = evidence_lead(question, cited) if question.strip() else None
    if lead is None or not _opens_with(result.answer, lead):
        return []
    notes = []
    for k, claim in enumerate(result.supported):
        evs = [by_id[i] for i in claim.evidence_ids]
        if not conflicts_with(claim.statement, evs, question=question, as_answer=False):
            continue
        said = " ".join(e.summary for e in evs)
        result.supported[k] = Claim(statement=said, evidence_ids=claim.evidence_ids)
        notes.append(f"the claim {claim.statement!r} said the opposite of its own evidence "
                     f"under an answer opening with what that evidence gives ({lead!r}); "
                     "the evidence's own words stand in for it")
    return notes


def find_contradictions(evidence: Sequence[Evidence]) -> list[str]:
    """Pairs of successful tool results that assert opposite things about one finding."""
    seen: dict[str, tuple[Evidence, bool]] = {}
    out: list[str] = []
    for ev in evidence:
        if ev.status != "ok":
            continue
        for a in ev.assertions:
            key = a.finding.strip().lower()
            if key in seen and seen[key][1] != a.present:
                other, present = seen[key]
                out.append(
                    f"{other.id} ({other.tool}) says {key} is "
                    f"{'present' if present else 'absent'}, but {ev.id} ({ev.tool}) says "
                    f"{'present' if a.present else 'absent'}"
                )
            seen.setdefault(key, (ev, a.present))
    return out


DEFECT_ADVICE = "call a tool that can answer it"
"""What rethink tells the planner after an answer that stands on nothing bearing on the question
(``ReviewResult.defects``); *think* reads it to offer the experts not yet asked."""


def review(proposal: FinalAnswerArgs, evidence: Sequence[Evidence], question: str = "",
           domain: str | None = None) -> ReviewResult:
    """Check every claim of ``proposal`` and look for contradictions among the evidence.

    ``question`` (the user's, when known) lets a bare "yes"/"no" answer be read for meaning.
    ``domain`` is the images' (``agent.trust.calibration.domain_of``): on ``clinical`` images
    an answer citing only readings of the pixels is a defect (``pixels_only``); on phantoms
    the pixels are the ground truth and may answer. On any image, so is an answer citing only
    evidence flagged as outside its tool's validated domain (``outside_only``), or only on
    evidence about other topics (``unrelated_only``: trained heads' modality, organ and plane
    for a question about a finding).
    """
    by_id = {e.id: e for e in evidence}
    result = ReviewResult(contradictions=find_contradictions(evidence), answer=proposal.answer)
    if not proposal.claims:
        if any(e.status == "ok" for e in evidence):
            result.problems.append(
                "the answer makes no claim; state each finding with the evidence ids behind it"
            )
        else:
            result.problems.append("there is no evidence yet; call a tool to look at the image")
        return result
    restated: list[str] = []
    asked: list[float] = []
    for claim in proposal.claims:
        why = check_claim(claim, by_id)
        ids = list(dict.fromkeys(claim.evidence_ids))
        if why is None:
            result.supported.append(Claim(statement=claim.statement, evidence_ids=ids))
        elif stray := _question_numbers_as_fact(claim, by_id, question, proposal.answer):
            asked.extend(stray)
            result.supported.append(Claim(statement=" ".join(by_id[i].summary for i in ids),
                                          evidence_ids=ids))
            restated.append(f"the claim {claim.statement!r} stated the question's own "
                            f"{', '.join(f'{x:g}' for x in stray)} as a finding; the "
                            "evidence's own words stand in for it")
        else:
            result.problems.append(why)
            result.dropped.append(claim.statement)
    cited = [(c.statement, [by_id[i] for i in c.evidence_ids]) for c in result.supported]
    cited_evidence = list({id(e): e for _, evs in cited for e in evs}.values())
    result.answer, result.mended = _mend(proposal.answer, question, cited_evidence)
    lead = leading_yes_no(result.answer)
    if asked and lead and any(_matches(x, asked) for x in numbers_in(result.answer)):
        # the answer's sentence garbles the question the same way: its yes/no alone stands
        restated.append(f"the answer {result.answer!r} stated the question's own numbers as "
                        f"a finding; its {lead!r}, which the evidence gives, is kept alone")
        result.answer = f"{lead.capitalize()}."
    result.mended = restated + result.mended
    result.mended += _restate_claims(result, by_id, question, cited_evidence)
    cited = [(c.statement, [by_id[i] for i in c.evidence_ids]) for c in result.supported]
    result.conflicts = answer_conflicts(result.answer, cited, question) if cited else []
    result.problems.extend(
        f"{c}; make the answer say what the evidence says, or call another tool"
        for c in result.conflicts)
    bare = pixels_only(question, cited_evidence) if domain == CLINICAL else ""
    outside = outside_only(question, cited_evidence, domain == CLINICAL)
    unrelated = "" if bare or outside else unrelated_only(question, cited_evidence)
    result.defects = [d for d in (bare, outside, unrelated) if d]
    result.problems.extend(f"{d}; {DEFECT_ADVICE}, or answer that it cannot be answered from "
                           "these tools" for d in result.defects)
    return result
