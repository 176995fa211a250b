"""Does an answer mean what its evidence says? Polarity, normality, side and count, checked.

The number check (``agent.trust.checks``) catches a planner that invents "12 mm"; this module
catches the subtler failure seen on real images: "No, the kidneys appear to be normal." citing
evidence that reports 76 lesions. Each sentence (the answer, each claim) is read into a
``Stance`` — which findings it names, whether it says they are present or absent, whether it
calls the image normal, which side and how many — and compared with the structured
``Assertion`` items of the evidence it cites. Reading is rule-based on purpose: short,
predictable, testable, and it only has to recognise the few words that carry meaning in a
radiology answer (yes/no, no/without/absent, normal/unremarkable, left/right/bilateral,
counts). What it cannot read it leaves alone rather than guessing: a check that cries wolf on
every paraphrase would train users to ignore it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from retrievers.vqa_library import label_mentions
from tools.evidence import PIXELS, Assertion, Evidence
from tools.question_form import QuestionForm, is_closed_question

__all__ = ["Stance", "answer_conflicts", "answered_lead", "bears_on", "conflicts_with",
           "could_carry", "declines", "evidence_lead", "evidence_yes_no",
           "finding_family", "holds_a_result", "keep_within", "leading_yes_no",
           "outside_only", "pixels_only", "same_question", "speaks_to", "stance_of",
           "unanswerable", "unrelated_only"]

# Findings that name the same thing in different words (lower case, singular).
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lesion", ("lesion", "focal lesion", "nodule", "mass", "tumor", "tumour", "metastasis",
                "metastase", "cyst", "blob", "opacity", "spot")),
    ("effusion", ("effusion", "pleural effusion", "fluid")),
    ("cardiomegaly", ("cardiomegaly", "enlarged heart", "heart enlargement",
                      "enlarged cardiac silhouette")),
    ("pneumothorax", ("pneumothorax",)),
    ("fracture", ("fracture", "break")),
    ("consolidation", ("consolidation", "pneumonia", "infiltrate")),
    ("edema", ("edema", "oedema")),
    ("atelectasis", ("atelectasis", "collapse")),
    ("hemorrhage", ("hemorrhage", "haemorrhage", "bleed", "hematoma", "haematoma")),
)
_NEGATION = re.compile(
    r"\b(no|not|without|absent|absence of|negative for|free of|none|neither|nor|never|"
    r"cannot be seen|is not seen|are not seen|rules? out|ruled out)\b")
_NORMAL = re.compile(r"\b(normal|unremarkable|healthy|within normal limits|no abnormalit\w*|"
                     r"nothing abnormal)\b")
_ABNORMAL = re.compile(r"\b(abnormal|abnormality|abnormalities|patholog\w*|diseased)\b")
_NOT_NORMAL = re.compile(r"\b(not|isn't|is not|are not|aren't)\s+(\w+\s+)?normal\b")
# "larger than normal" is not normal: a comparison with normal names a departure from it
_THAN_NORMAL = re.compile(r"\b(\w+er|more \w+|less \w+)\s+than\s+(normal|usual)\b")
_NOT_THAN_NORMAL = re.compile(r"\b(not|no|isn't|aren't|never)\s+(\w+\s+)?(\w+er|more \w+|"
                              r"less \w+)\s+than\s+(normal|usual)\b")
# A bare yes/no: the word alone or followed by punctuation ("No nodules" is not a "No").
_YES = re.compile(r"^\s*(yes|yeah|correct|true|present|positive)\s*([,.;:!—-]|$)")
_NO = re.compile(r"^\s*(no|none|false|absent|negative)\s*([,.;:!—-]|$)")
_WORD_NUMBERS = {"no": 0, "zero": 0, "none": 0, "one": 1, "a single": 1, "single": 1, "two": 2,
                 "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                 "ten": 10}
_COUNT = re.compile(r"\b(\d+|zero|one|a single|single|two|three|four|five|six|seven|eight|nine|"
                    r"ten)\s+(?:\w+\s+){0,2}?(\w+)\b")


_KNOWN = frozenset(f for f, _ in _FAMILIES)
_UNDECIDED = re.compile(r"\b(cannot|can't|unable|unclear|uncertain|unknown|not sure|"
                        r"indeterminate|not possible to|no way to)\b")


def _singular(word: str) -> str:
    if word.endswith(("ss", "us", "is")):  # mass, thrombus, metastasis: already singular
        return word
    for suffix, repl in (("ies", "y"), ("ses", "s"), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + repl
    return word


def _normalise(text: str) -> str:
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())
    return " ".join(_singular(w) for w in words)


def finding_family(finding: str) -> str:
    """The canonical name of ``finding`` ("nodules" -> "lesion"); itself when unknown."""
    norm = _normalise(finding)
    for family, words in _FAMILIES:
        if any(re.search(rf"\b{re.escape(w)}\b", norm) for w in words):
            return family
    return norm


def _families_in(text: str) -> set[str]:
    norm = _normalise(text)
    return {family for family, words in _FAMILIES
            if any(re.search(rf"\b{re.escape(w)}\b", norm) for w in words)}


@dataclass(frozen=True)
class Stance:
    """What one sentence asserts.

    Attributes:
        findings: canonical families of the findings it names (``finding_family``).
        polarity: ``present`` / ``absent`` for the named findings (a bare yes/no counts only
            when the question it answers asks about a finding); None when it says neither.
        normal: True when it calls the image or organ normal, False when abnormal, else None.
        sides: ``left`` / ``right`` it places findings on (both for "bilateral").
        count: how many findings it says there are (None when it gives no number).
        self_conflict: why the sentence contradicts itself ("No, ... normal" to "normal?").
    """

    findings: frozenset[str]
    polarity: str | None
    normal: bool | None
    sides: frozenset[str]
    count: int | None
    self_conflict: str = ""


def _count_of(low: str, findings: set[str]) -> int | None:
    for m in _COUNT.finditer(low):
        noun = finding_family(m.group(2))
        if noun in findings or (not findings and noun in _KNOWN):
            raw = m.group(1)
            return int(raw) if raw.isdigit() else _WORD_NUMBERS[raw]
    words = [w for f, ws in _FAMILIES if f in findings for w in ws]
    if words and re.search(r"\bno\s+(\w+\s+)?(" + "|".join(map(re.escape, words)) + r")", low):
        return 0
    return None


def _normality(low: str) -> bool | None:
    if _THAN_NORMAL.search(low):
        return _NOT_THAN_NORMAL.search(low) is not None
    if _NOT_NORMAL.search(low):
        return False
    if _NORMAL.search(low):
        return True
    if _ABNORMAL.search(low) and not _NEGATION.search(low):
        return False
    return None


def _yes_no(low: str) -> bool | None:
    if _YES.search(low):
        return True
    if _NO.search(low):
        return False
    return None


def leading_yes_no(text: str) -> str | None:
    """``yes`` / ``no`` when ``text`` opens with a bare yes or no ("No, ..."), else None."""
    said = _yes_no(text.lower())
    return None if said is None else "yes" if said else "no"


_FILLER = frozenset((
    "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "can",
    "could", "has", "have", "had", "will", "would", "should", "shall", "may", "might", "must",
    "a", "an", "the", "this", "that", "these", "those", "there", "here", "it", "its", "of",
    "in", "on", "at", "to", "for", "with", "by", "from", "as", "and", "any", "some", "seen",
    "see", "visible", "present", "shown", "show", "shows"))
"""Words that carry no content of a question (auxiliaries, articles, "seen")."""
_CLAUSE_END = re.compile(r"[,;.!?]|\bbut\b")
_LEAD_YES_NO = re.compile(r"^\s*(yes|yeah|correct|true|no|none|false)\b[\s,.;:!-]*")


def _content_words(low: str) -> set[str]:
    return {_singular(w) for w in re.findall(r"[a-z]+", low) if w not in _FILLER}


def _restates_against(low: str, q_low: str, yes: bool) -> str:
    """Why "No, <the question as a statement>" (or "Yes, <it negated>") contradicts itself.

    The small planner wrote "No, this is a lateral film." to "Is this a lateral film?": its
    first clause states every content word of the question, with the opposite polarity to its
    leading word. Only the first clause is read ("Yes, there is a mass, not in the lung." is
    no contradiction), and a question that itself negates is left alone.
    """
    if _NEGATION.search(q_low):
        return ""
    body = _LEAD_YES_NO.sub("", low)
    clause = _CLAUSE_END.split(body, maxsplit=1)[0]
    wanted = _content_words(q_low)
    if not wanted or not wanted <= _content_words(clause):
        return ""
    negated = _NEGATION.search(clause) is not None
    if yes == negated:
        said = "yes" if yes else "no"
        then = "denies it" if negated else "states it"
        return f"it answers {said}, then {then} ({clause.strip()!r})"
    return ""


_NEGATOR = re.compile(r"\b(not|no|never)\b|n't\b")


def _says_and_unsays(low: str) -> str:
    """Why a sentence states something and, in another clause, its plain negation ("" if not).

    The small planner wrote "No, pleural plaques are not just pleural surfaces, but pleural
    plaques are just pleural surfaces." to a question its evidence answered "no": two clauses
    with the same words, one negated. Only exact restatements count (at least two words
    besides the negation), so "a mass, not a cyst" or "the left is normal, the right is not"
    are left alone.
    """
    body = _LEAD_YES_NO.sub("", low)
    seen: dict[tuple[str, ...], tuple[bool, str]] = {}
    for clause in _CLAUSE_END.split(body):
        words = tuple(re.findall(r"[a-z]+", _NEGATOR.sub(" ", clause)))
        if len(words) < 2:
            continue
        negated = _NEGATOR.search(clause) is not None
        if words in seen and seen[words][0] != negated:
            first = seen[words][1]
            return f"it says {first.strip()!r} and {clause.strip()!r}"
        seen.setdefault(words, (negated, clause))
    return ""


def stance_of(text: str, question: str = "", *, as_answer: bool = True) -> Stance:
    """Read ``text`` (answering ``question``, when given) into a ``Stance``.

    A leading yes/no is read through the question: "No" to "Are the kidneys normal?" means
    abnormal; "No" to "Is there a nodule?" means no nodule. Without the question a bare yes/no
    says nothing the evidence could contradict. To an either-or question ("on the patient's
    left or right side?") a leading yes/no answers nothing and is dropped: the small planner
    wrote "No, the lesion is on the patient's left side." and was read as denying the lesion.
    A question about the image ("which quadrant of the image") is answered in the image's
    frame, so its bare left/right are places in the image, not the patient's sides.
    ``as_answer=False`` reads a claim: the question's form applies, its yes/no does not (a
    bare "No." claim is not read as denying the question's finding).
    """
    low = text.lower()
    form = QuestionForm.of(question)
    if form.either_or:
        low = re.sub(r"^\s*(yes|no)\b[\s,.;:!-]*", "", low)
    findings = _families_in(low)
    normal = _normality(low)
    polarity: str | None = None
    if findings:
        polarity = "absent" if _NEGATION.search(low) else "present"
    yes = _yes_no(low)
    conflict = ""
    if yes is not None and question.strip() and as_answer:
        q = question.lower()
        compared = _THAN_NORMAL.search(q) is not None  # "smaller than normal?": abnormal?
        q_normal = not compared and re.search(r"\b(normal|unremarkable)\b", q) is not None
        q_abnormal = compared or _ABNORMAL.search(q) is not None
        q_findings = _families_in(q)
        if q_normal or q_abnormal:
            said = yes if q_normal else not yes
            if normal is not None and normal != said:
                conflict = (f"it answers {'yes' if yes else 'no'} to whether it is "
                            f"{'normal' if q_normal else 'abnormal'}, then calls it "
                            f"{'normal' if normal else 'abnormal'}")
            normal = said
        elif q_findings and not findings:
            findings = q_findings
            polarity = "present" if yes else "absent"
        if not conflict and form.yes_no:
            conflict = _restates_against(low, q, yes)
    if not conflict and as_answer:
        conflict = _says_and_unsays(low)
    return Stance(frozenset(findings), polarity, normal,
                  frozenset(_sides_of(low, form.image_frame)), _count_of(low, findings), conflict)


def _reliable(ev: Evidence) -> list[Assertion]:
    """The assertions a sentence can be held to: from successful, in-domain evidence only."""
    if ev.status != "ok" or ev.data.get("out_of_domain"):
        return []
    return list(ev.assertions)


_PATIENT_SIDE = re.compile(r"\bpatient'?s (left|right)\b")
_IMAGE_PLACE = re.compile(r"\b(?:(?:upper|lower|top|bottom|middle)[ -])?(?:left|right)"
                          r"(?: (?:half|side|part|edge))? of the (?:image|picture|film)\b")


def _sides_of(low: str, image_frame: bool = False) -> set[str]:
    """The patient's sides a sentence places findings on.

    "Bilateral" is both. A side named as the patient's wins; a place in the image ("in the
    lower right of the image") is not the patient's side (a frontal radiograph shows the
    patient's left on the image's right), so it is left out before bare left/right words are
    read. Copying a detector's "lower right of the image (patient's left side)" used to read
    as right and left at once, and conflict with the detector itself.
    """
    if re.search(r"\b(bilateral\w*|both sides)\b", low):
        return {"left", "right"}
    patient = set(_PATIENT_SIDE.findall(low))
    if patient:
        return patient
    if image_frame:
        return set()
    rest = _IMAGE_PLACE.sub(" ", low)
    return {s for s in ("left", "right") if re.search(rf"\b{s}\b", rest)}


def _side_words(side: str | None) -> set[str]:
    return {"left", "right"} if side == "both" else ({side} if side else set())


def _finding_conflicts(st: Stance, ev: Evidence, a: Assertion, who: str) -> list[str]:
    """One assertion against the sentence: polarity, normality, side, count."""
    fam = finding_family(a.finding)
    about = fam in st.findings
    where = f"{ev.id} ({ev.tool}) reports {a.finding} {'present' if a.present else 'absent'}"
    out = []
    if about and st.polarity == "absent" and a.present:
        out.append(f"{who} says there is no {fam}, but {where}")
    elif about and st.polarity == "present" and not a.present:
        out.append(f"{who} says there is {fam}, but {where}")
    if st.normal is True and a.present and fam in _KNOWN:
        out.append(f"{who} calls it normal, but {where}")
    if about and a.present and st.sides and a.side and st.sides != _side_words(a.side):
        out.append(f"{who} places the {fam} on the {'/'.join(sorted(st.sides))}, but "
                   f"{ev.id} ({ev.tool}) reports the patient's {a.side} side")
    if about and st.count and a.count is not None and st.count != a.count:
        out.append(f"{who} counts {st.count} {fam}, but {ev.id} ({ev.tool}) counts {a.count}")
    return out


def same_question(a: str, b: str) -> bool:
    """Whether two questions are the same words (case and spacing aside)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _answers_yes_no(ev: Evidence, question: str) -> str | None:
    """``"yes"``/``"no"`` when ``ev`` is good, in-domain evidence that answered ``question``."""
    answered = ev.data.get("yes_no")
    if (ev.status == "ok" and not ev.data.get("out_of_domain") and answered in ("yes", "no")
            and same_question(str(ev.data.get("question", "")), question)):
        return str(answered)
    return None


def evidence_yes_no(question: str, evidence: Iterable[Evidence]) -> str | None:
    """The yes/no the evidence gives this very yes/no question, when it gives one, unanimously.

    None when the question is not a yes/no question, when no evidence answered it, or when
    evidence answered both ways (then the planner weighs it, and the answer says so). The
    planner's ``final_answer`` is bound to start with this word (``agent.planner.offer``): a
    small planner wrote "No." under evidence reading "Answer: yes" on real items.
    """
    if not question.strip() or not is_closed_question(question):
        return None
    said = {a for ev in evidence if (a := _answers_yes_no(ev, question))}
    return said.pop() if len(said) == 1 else None


_HOW_MANY = re.compile(r"^\s*how many\b", re.IGNORECASE)
# "Is there a lesion?", "Are there any nodules in this image?", "Does the image show a mass?"
_PRESENCE = re.compile(
    r"^\s*(is|are) there\b|^\s*(does|do) (this|the) (image|scan|film|picture|study|radiograph)s?"
    r" (show|contain|have|demonstrate)\b", re.IGNORECASE)
# what makes a presence question ask more than presence: a side, a place, a number, a size
_QUALIFIED = re.compile(
    r"\b(left|right|upper|lower|anterior|posterior|medial|lateral|more|less|fewer|larger|"
    r"smaller|bigger|than|multiple|several|many|only|single|one|two|three|four|five|both|"
    r"each|every|new|old|quadrant|\d+)\b", re.IGNORECASE)
_SIZE = re.compile(r"\b(diameter|size|how (big|large|wide)|across)\b")


def _names(finding: str, question: str) -> bool:
    """Whether ``question`` names ``finding`` (its head noun, singular or plural)."""
    words = re.findall(r"[a-z]+", finding.lower())
    return bool(words) and re.search(rf"\b{re.escape(words[-1])}(s|es)?\b", question.lower()) \
        is not None


def answered_lead(question: str, evidence: Iterable[Evidence]) -> str | None:
    """What evidence that answered this very question gave as its answer, when unanimous.

    ``Yes``/``No`` (``evidence_yes_no``), or the words a trained head's class is said in
    (``data["label_answer"]``) for an open question about the image's modality, organ or plane.
    Such evidence says nothing but that answer: no finding described, no place, no size. None
    when no evidence answered the question, or when it answered it more than one way.
    """
    evidence = list(evidence)
    said = evidence_yes_no(question, evidence)
    if said is not None:
        return said.capitalize()
    named = _head_labels(question, evidence)
    return named.pop() if len(named) == 1 else None


def _head_labels(question: str, evidence: Iterable[Evidence]) -> set[str]:
    """The classes good, in-domain evidence that answered this very question said it in."""
    return {str(ev.data["label_answer"]) for ev in evidence
            if ev.status == "ok" and not ev.data.get("out_of_domain")
            and ev.data.get("label_answer")
            and same_question(str(ev.data.get("question", "")), question)}


# Words an answer may add to its question and evidence without adding a fact: pronouns,
# connectives, negations, and the ways of saying "there is evidence of" and "seen".
_PLAIN = _FILLER | frozenset((
    "yes", "yeah", "no", "not", "none", "nor", "neither", "without", "nothing", "anything",
    "something", "they", "them", "their", "he", "she", "his", "her", "we", "you", "your",
    "i", "my", "our", "which", "who", "what", "where", "when", "how", "why", "but", "or",
    "so", "also", "than", "then", "about", "into", "within", "both", "all", "each",
    "evidence", "evident", "support", "supports", "suggest", "suggests", "suggestive",
    "sign", "signs", "indicate", "indicates", "indication", "finding", "findings", "feature",
    "features", "noted", "note", "identified", "identify", "found", "appear", "appears",
    "appearance", "image", "images", "picture", "scan", "patient", "patients", "case",
    "claim", "answer", "question", "demonstrate", "demonstrates", "demonstrated", "showing",
    "observed", "detected", "contain", "contains", "seem", "seems"))


def _stem(word: str) -> str:
    """A word's first six letters, singular: "calcified" and "calcifies" are one stem."""
    return _singular(word)[:6]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def keep_within(answer: str, lead: str, question: str,
                evidence: Sequence[Evidence]) -> tuple[str, list[str]]:
    """``answer`` cut before its first sentence saying more than question and evidence hold.

    Returns the answer so cut, and the words that went beyond them. Under evidence that only
    answered the question (``answered_lead``: the neighbours' "no", a head's "Axial"), a
    sentence may restate the question with that answer, and nothing more: on the 988 dev items
    the small planner added "The lung is only slightly inflated." under "No, both lungs are not
    abnormally inflated.", and wrote "Yes, there is a link to the temporal lobes." for "Is there
    involvement of the temporal lobes?": findings no tool reported. The sentences before the
    first such one are kept; when it is the first, the ``lead`` alone is ("Yes."). Words are
    compared by ``_stem`` (six letters, singular), so "calcifies" restates "calcified"; a word
    whose stem the question, the lead or the evidence has, or one of the plain words
    (``_PLAIN``: "evidence", "seen", pronouns, negations), adds nothing. Returns the answer
    unchanged and ``[]`` when nothing went beyond.
    """
    known = {_stem(w) for text in (question, lead, *(e.summary for e in evidence))
             for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2}
    kept: list[str] = []
    for sentence in _sentences(answer):
        beyond = [w for w in re.findall(r"[a-z]+", sentence.lower())
                  if len(w) > 2 and w not in _PLAIN and _stem(w) not in known]
        if beyond:
            text = " ".join(kept) if kept else f"{lead.rstrip('.')}."
            return text, list(dict.fromkeys(beyond))
        kept.append(sentence)
    return answer, []


def evidence_lead(question: str, evidence: Iterable[Evidence]) -> str | None:
    """The words this question's answer must open with, when in-domain evidence gave them.

    ``Yes`` / ``No`` as ``evidence_yes_no`` gives them; for an open question about the
    image's modality, organ or plane, the words a trained head's class is said in
    (``data["label_answer"]``, ``retrievers.label_answers``) by evidence that answered this
    very question; or for a bare presence question ("Is
    there a <finding> in this image?", with no side, place, number or size to it) as the
    evidence's assertions about that finding unanimously say; for "How many <finding>...?" the count
    that good, in-domain evidence asserts for that finding; for "... the patient's left or
    right ...?" the side it asserts the finding on; for its diameter or size, the one it
    measured (the largest when asked for the largest); for the quadrant of the image, the one
    it located it in (``data["lesions"]``, largest first). Each only when the evidence is
    unanimous and, past the count, none of it says the finding is absent; None otherwise.
    The planner's ``final_answer`` is bound to open with these words
    (``agent.planner.offer.bind_answer``): on 100 phantoms, under evidence that had it right,
    the small planner answered "How many focal lesions?" with a place 11 times, gave the side
    opposite to the detector's 8 times, another lesion's diameter 7 times and the wrong
    quadrant 7 times; and once "No, there is no lesion in this image." under a detector that
    found one.
    """
    evidence = list(evidence)
    answered = answered_lead(question, evidence)
    if answered is not None:
        return answered
    if _head_labels(question, evidence):
        return None  # heads that answered this question disagree
    asserted = [a for ev in evidence if ev.status == "ok" and not ev.data.get("out_of_domain")
                for a in ev.assertions if _names(a.finding, question)]
    if not asserted:
        return None
    if _PRESENCE.match(question) and not _QUALIFIED.search(question):
        present = {a.present for a in asserted}
        return ("Yes" if present.pop() else "No") if len(present) == 1 else None
    if _HOW_MANY.match(question):
        counts = {a.count for a in asserted if a.count is not None}
        return str(counts.pop()) if len(counts) == 1 else None
    if not all(a.present for a in asserted):
        return None
    form = QuestionForm.of(question)
    q = question.lower()
    if (form.either_or and not form.image_frame and re.search(r"\bleft\b", q)
            and re.search(r"\bright\b", q)):
        sides = {a.side for a in asserted if a.side in ("left", "right")}
        return sides.pop().capitalize() if len(sides) == 1 else None
    good = [ev for ev in evidence if ev.status == "ok" and not ev.data.get("out_of_domain")
            and any(_names(a.finding, question) for a in ev.assertions)]
    largest = re.search(r"\b(largest|biggest)\b", q) is not None
    if _SIZE.search(q):
        sizes = {(m.value, m.unit) for ev in good for m in ev.measurements
                 if "diameter" in m.name}
        if len(sizes) == 1 or (largest and sizes):
            value, unit = max(sizes)
            return f"{value:g} {unit}".strip()
        return None
    if form.image_frame and "quadrant" in q:
        places = [str(d.get("quadrant")) for ev in good for d in ev.data.get("lesions") or []
                  if isinstance(d, dict) and d.get("quadrant")]
        if places and (len(set(places)) == 1 or largest):
            return places[0].capitalize()  # the list is largest first
    return None


def unanswerable(question: str, evidence: Sequence[Evidence],
                 cited: Sequence[Evidence]) -> Evidence | None:
    """Evidence that declined this very question, when nothing the answer cites answers it.

    A tool asked the user's question that has no answer for it says so: ``data["answer"]``
    is None beside ``data["question"]`` (``case_answer`` when no similar image was asked a
    similar question, and when it withholds the cases' answer where they did no better than
    the commonest answer, ``data["withheld"]``). An answer is then only given if its cited
    evidence holds a result that can stand beside the decline (``holds_a_result``: a yes/no
    for it, a finding, a measurement, ...). Otherwise the planner's sentence stands on
    nothing, and the agent abstains and says what could not be checked. The small planner
    answered "No." to "Is this image abnormal?" from a summary that declined it; on 640 real
    items it wrote 167 answers ("The patient has a lung.", "The lesion is in the lower left of
    the image.") under a ``case_answer`` saying "the case library cannot answer this", 36 of
    them given (at raw 0.42-0.65; 5 right by chance), the rest as "Uncertain".
    """
    if not question.strip():
        return None
    declined = [ev for ev in evidence if ev.status == "ok" and declines(ev)
                and same_question(str(ev.data.get("question", "")), question)]
    if not declined:
        return None
    if any(holds_a_result(ev, question) for ev in cited if not declines(ev)):
        return None
    return declined[0]


def holds_a_result(ev: Evidence, question: str) -> bool:
    """Whether ``ev`` holds something a tool found that can stand beside a declined question.

    A yes/no for the question, an assertion about a finding, a measurement, a located box, a
    mask or a derived image, a list of similar cases; a reading of the picture itself
    (``data["observes"] == PIXELS``: intensities, burned-in text and its boxes) only where it
    ``bears_on`` the question: a question about the picture ("Describe this image", "What
    does the text say?"), or a DICOM's reading that states its recorded modality, body part or
    view ("What is this?" on a CT). Since the graph asks ``case_answer`` first on every
    clinical image, its "no answer" stands beside what the planner went on to gather for
    questions no case answers.
    """
    if ev.data.get("observes") == PIXELS:
        return bears_on(ev, question)
    return bool(ev.assertions or ev.measurements or ev.boxes or ev.mask_keys
                or ev.new_image_ids or ev.data.get("cases") or _answers_yes_no(ev, question))


def could_carry(ev: Evidence, question: str, clinical: bool = True) -> bool:
    """Whether ``ev`` could carry an answer to ``question`` beside a tool that declined it.

    It must have succeeded, not be a decline itself, be inside its tool's domain (flagged
    evidence carries nothing, ``outside_only``), speak to the question (``speaks_to``), bear on
    it on a clinical image (``bears_on``) and hold a result (``holds_a_result``). What fails
    this is what an answer may not stand on, so a round of tool calls that brought only such
    evidence brought nothing the answer can use.
    """
    return (ev.status == "ok" and not declines(ev) and not ev.data.get("out_of_domain")
            and speaks_to(ev, question) and (not clinical or bears_on(ev, question))
            and holds_a_result(ev, question))


def declines(ev: Evidence) -> bool:
    """Whether ``ev`` is a tool's "no answer" to the question it was asked."""
    return bool(ev.data.get("withheld")) or ("answer" in ev.data and ev.data["answer"] is None
                                             and bool(ev.data.get("question")))


_PICTURE = r"(this|the|these|an?) (image|picture|scan|film|radiograph|study|file|x-?ray|ct|mri?)s?"
_ABOUT_PICTURE = re.compile(
    r"\b(pixels?|px|spacing|(image|picture) (size|width|height|dimensions?|resolution)|"
    r"(size|width|height|dimensions?|resolution) of (the|this) (image|picture|file)|text|"
    r"written|writing|letters?|says?|read|date|window(ing|ed)?|histogram|pixel values?|"
    r"intensity values?|mean intensity|gr[ae]y ?levels?|"
    # a request to describe the picture itself, not a finding in it ("Describe the appendix")
    rf"(describe|summari[sz]e|overview of|description of) {_PICTURE}|"
    r"describe what (you|is) (see|seen|shown|visible))\b|\bdescribe\W*$|"
    r"^\s*(show|display|open|zoom)\b")


def bears_on(ev: Evidence, question: str) -> bool:
    """Whether ``ev`` holds anything that can bear on ``question``.

    Everything does except a reading of the picture itself (``data["observes"] == PIXELS``:
    intensity statistics, sizes, burned-in text) of an image that records nothing about how it
    was taken. That bears only on a question about the picture: its size, intensities or text,
    a request to describe it or to show it ("Show the lungs." is answered by a window). A
    reading that carries the image's recorded modality, body part or view (a DICOM file's)
    also states those facts, and is left to the meaning checks.
    """
    if ev.data.get("observes") != PIXELS:
        return True
    if _ABOUT_PICTURE.search(question.lower()):
        return True
    # DICOM's "OT" is "other": it records nothing either
    return any(str(ev.data.get(k) or "").strip().lower() not in ("", "unknown", "none", "ot")
               for k in ("modality", "body_part", "view_position"))


def speaks_to(ev: Evidence, question: str) -> bool:
    """Whether ``question`` is about something ``ev`` speaks to.

    Evidence that answers only some topics lists their words in ``data["about"]`` (trained
    heads: modality, organ, plane and their classes, ``retrievers.heads.about_words``; report
    sentences: how reports word a finding, ``retrievers.similar.REPORT_WORDS``); it speaks to
    a question that names one of them. Other evidence speaks to any question.
    """
    about = ev.data.get("about")
    if not isinstance(about, list) or not about:
        return True
    low = question.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(str(w).lower())}(?![a-z0-9])", low)
               for w in about)


def unrelated_only(question: str, cited: Sequence[Evidence]) -> str:
    """Why an answer citing only ``cited`` stands on evidence about other topics.

    Empty when something cited speaks to ``question`` (``speaks_to``).
    """
    if not question.strip() or not cited or any(speaks_to(ev, question) for ev in cited):
        return ""
    ids = ", ".join(f"{ev.id} ({ev.tool})" for ev in cited)
    topics = sorted({t for ev in cited for t in ev.data.get("probabilities", {})}
                    | {str(ev.data["topic"]) for ev in cited if ev.data.get("topic")}) or ["others"]
    return (f"the answer stands only on {ids}, which speaks to {', '.join(topics)}, not to "
            "what this question asks")


def pixels_only(question: str, cited: Sequence[Evidence]) -> str:
    """Why an answer citing only ``cited`` stands on nothing that bears on ``question``.

    Empty when something cited bears on it (``bears_on``). On real images the small planner
    answered "What material is the peripheral hypodensity?" with "The material is the
    peripheral hypodensity." citing ``describe_image`` alone, whose score (1.0: its numbers
    are exact) then lent the sentence a confidence of 0.89.
    """
    if not question.strip() or not cited or any(bears_on(ev, question) for ev in cited):
        return ""
    ids = ", ".join(f"{ev.id} ({ev.tool})" for ev in cited)
    verb = "reads" if len(cited) == 1 else "read"
    return (f"the answer rests only on {ids}, which {verb} the picture's pixels, not what they "
            "show; nothing cited bears on this question")


def outside_only(question: str, cited: Sequence[Evidence], clinical: bool = True) -> str:
    """Why an answer citing ``cited`` stands on evidence no tool vouches for here.

    Empty unless some cited item is flagged as outside its tool's validated domain
    (``data["out_of_domain"]``, ``tools.domain``) and none of the rest carries the answer: on a
    clinical image a reading of the pixels carries nothing (``bears_on``; citing
    ``describe_image`` beside a flagged measurement does not make it one). Flagged evidence
    cannot contradict an answer (``_reliable``), so it cannot carry one either: on real items
    the 1.5B planner, offered ``measure_lungs`` beside ``case_answer``, answered "There is
    tracheal deviation." and "The gallbladder wall is not enhanced by contrast." from lung
    areas measured on a JPEG (flagged: its view cannot be established), at 0.54-0.65
    confidence; 7 of its 15 such answers were right, a coin's odds.
    """
    flagged = [ev for ev in cited if ev.data.get("out_of_domain")]
    if not flagged or any(not ev.data.get("out_of_domain") and speaks_to(ev, question)
                          and (not clinical or bears_on(ev, question)) for ev in cited):
        return ""
    ids = ", ".join(f"{ev.id} ({ev.tool})" for ev in flagged)
    whose = "its tool was" if len(flagged) == 1 else "their tools were"
    return (f"the answer stands only on {ids}, outside what {whose} validated for; nothing "
            "from inside a tool's domain bears on this question")


def _yes_no_conflicts(text: str, evidence: Iterable[Evidence], question: str,
                      who: str) -> list[str]:
    """A yes/no answer against evidence that answered this very question yes or no.

    Such evidence (``case_answer``'s library models) says so in ``data["yes_no"]`` with the
    question it answered in ``data["question"]``; evidence about another wording is left
    alone (a miss, not a false alarm).
    """
    if not question.strip():
        return []
    low = text.lower()
    said = _yes_no(low)
    if said is None and is_closed_question(question) and not _UNDECIDED.search(low):
        # "There is a midline shift." answers "Is there a midline shift?" with a yes; a
        # sentence that negates anything ("no", "not", "without") with a no
        said = not _NEGATION.search(low)
    if said is None:
        return []
    out = []
    for ev in evidence:
        answered = _answers_yes_no(ev, question)
        if answered is not None and (answered == "yes") != said:
            out.append(f"{who} says {'yes' if said else 'no'}, but {ev.id} ({ev.tool}) answers "
                       f"{answered} to this question")
    return out


def _label_conflicts(text: str, evidence: Iterable[Evidence], question: str,
                     who: str) -> list[str]:
    """An answer naming another modality, organ or plane than a trained head gave.

    Such evidence (``case_answer``'s heads, ``retrievers.label_answers``) keeps the class it
    read in ``data["label"]`` ("ct", "frontal", "ct/head/axial" for a description) with the
    question it answered; an answer that names classes of the same task, none of them that
    one ("MRI" where the head gave CT), contradicts it. The embedded planner is bound to open
    with the head's words (``evidence_lead``); a planner that is not, is held to them here.
    """
    if not question.strip():
        return []
    said = label_mentions(text)
    out = []
    for ev in evidence:
        label = ev.data.get("label")
        if (ev.status != "ok" or ev.data.get("out_of_domain") or not label
                or not ev.data.get("label_answer")
                or not same_question(str(ev.data.get("question", "")), question)):
            continue
        gave = label_mentions(" ".join(str(label).split("/")))
        for task, classes in said.items():
            if gave.get(task) and not classes & gave[task]:
                out.append(f"{who} names {task} {', '.join(sorted(classes))}, but {ev.id} "
                           f"({ev.tool}) gives {task} {', '.join(sorted(gave[task]))} for this "
                           "question")
    return out


def conflicts_with(text: str, evidence: Iterable[Evidence], *, question: str = "",
                   who: str = "the answer", as_answer: bool = True) -> list[str]:
    """Why ``text`` contradicts itself or the assertions of ``evidence`` (empty: it agrees).

    Each message names the sentence and the evidence id that says otherwise, in words the
    planner can act on. Only findings medloop knows to be abnormal (``_FAMILIES``) count
    against "normal"; a classifier's "chest: present" does not. ``as_answer=False`` reads a
    claim through the question's form only (``stance_of``): no yes/no is read into it.
    """
    st = stance_of(text, question, as_answer=as_answer)
    out = [f"{who} contradicts itself: {st.self_conflict}"] if st.self_conflict else []
    if as_answer:
        out += _yes_no_conflicts(text, evidence, question, who)
        out += _label_conflicts(text, evidence, question, who)
    pairs = [(ev, a) for ev in evidence for a in _reliable(ev)]
    for ev, a in pairs:
        out.extend(_finding_conflicts(st, ev, a, who))
    known = [(ev, a) for ev, a in pairs if finding_family(a.finding) in _KNOWN]
    if st.normal is False and known and all(not a.present for _, a in known):
        ids = ", ".join(sorted({ev.id for ev, _ in known}))
        out.append(f"{who} calls it abnormal, but {ids} report no finding present")
    return list(dict.fromkeys(out))


def answer_conflicts(answer: str, claims: Sequence[tuple[str, Sequence[Evidence]]],
                     question: str = "") -> list[str]:
    """Conflicts of the answer with everything its claims cite, then of each claim with its own.

    ``claims`` pairs each claim's statement with the evidence it cites; the answer is read
    through ``question`` (its yes/no), the claims on their own words, except that the
    question's form still applies to them (an either-or question, a question in the image's
    frame).
    """
    cited = list({id(ev): ev for _, evs in claims for ev in evs}.values())
    out = (conflicts_with(answer, cited, question=question, who="the answer")
           if answer.strip() else [])
    for statement, evs in claims:
        out.extend(conflicts_with(statement, evs, question=question, as_answer=False,
                                  who=f"claim {statement[:60]!r}"))
    return list(dict.fromkeys(out))
