"""Open questions about what the whole image is, answered by the library's trained heads.

"What imaging modality was used?", "In what plane is this image?", "What organ system is
shown?": the neighbours' vote (``retrievers.case_answers``) answers these only when a similar
image was asked a near paraphrase, and on the dev set it stayed below the commonest answer for
organ and plane questions (``bench/case_library.md``). The library's trained heads, on the other
hand, tell an image's modality, organ and plane at 0.92-1.00 on held-out images. This module
joins the two: the head names the label (``plane: frontal``), and the library's own pairs say
how clinicians answer that kind of question about images carrying that label (on its frontal
chest films they answered "PA"), so the answer is in their words, not the head's class name.

Its score is the head's probability times the share of the library's answers in those words,
smoothed towards one half (``(n + 1) / (N + 2)``): a head sure of "frontal" over a library that
called its frontal films "PA" 5 times of 6 scores 0.97 x 0.75. Without such answers in the
library the class name is said, at half the head's probability.

Two additions: "Describe this image" gets every whole-image head at once
(``describe_answer``), and where the image has a DICOM header, what it says of the modality
and body part goes before the heads (``retrievers.header_labels``, ``heads.read_labels``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from retrievers.header_labels import unknown_to_heads
from retrievers.heads import PROJECTIONS, Head, read_labels
from retrievers.vqa_library import (
    QAItem,
    choice_question,
    describe_question,
    image_labels,
    label_mentions,
    normalise_answer,
    open_label_question,
)

__all__ = ["CHOICE", "DESCRIBE", "LabelAnswer", "choice_answer", "class_words",
           "describe_answer", "knows_only", "label_answer", "label_phrasings"]

_CLASS_WORDS = {"ct": "CT", "mr": "MRI", "xray": "X-ray", "us": "ultrasound", "abd": "abdomen",
                "frontal": "frontal (PA or AP)", "nm": "nuclear medicine", "pt": "PET",
                "xa": "angiography", "mg": "mammography"}
"""How a class is said when the library has no answer in clinicians' words for it."""


def class_words(label: str) -> str:
    """A head's class in plain words ("us" -> "ultrasound"; "axial" stays)."""
    return _CLASS_WORDS.get(label, label)


DESCRIBE = "describe"
"""The task of ``describe_answer``'s answers: every whole-image head at once."""
CHOICE = "choice"
"""The task of ``choice_answer``'s answers: one of the classes the question offers."""
_DESCRIBED = ("modality", "organ", "plane")


@dataclass(frozen=True)
class LabelAnswer:
    """An open label question's answer: the words, the task and class behind them, the score."""

    answer: str
    task: str
    label: str
    p_label: float
    said: int
    of: int
    score: float
    summary: str
    from_header: bool = False
    """Every label in the answer is what the image's DICOM header says, none a head's reading:
    the per-kind table, measured on the library's headerless JPEGs, does not judge it."""


def label_phrasings(items: list[QAItem]) -> dict[tuple[str, str], Counter[str]]:
    """``(task, class) -> Counter`` of the answers (as given) to open label questions.

    Each open pair whose question asks a label task (``open_label_question``) about an image
    that carries a label of that task (``image_labels``, read from the pairs themselves)
    counts its answer for that class; answers are grouped by their normalised form and kept in
    the first spelling met.
    """
    labels = image_labels(items)
    out: dict[tuple[str, str], Counter[str]] = {}
    spelling: dict[str, str] = {}
    for it in items:
        if it.answer_type == "yesno" or not it.answer.strip():
            continue
        task = open_label_question(it.question)
        value = labels.get(it.image, {}).get(task or "")
        if task is None or value is None:
            continue
        key = normalise_answer(it.answer)
        out.setdefault((task, value), Counter())[spelling.setdefault(key, it.answer.strip())] += 1
    return out


def _fitting(said: Counter[str], heads: dict[str, Head], vector: np.ndarray, embedder: str,
             header: Mapping[str, str] | None) -> Counter[str]:
    """The phrasings that name no other modality, organ or plane than this image reads as.

    The library's clinicians answered its X-rays "Chest x-ray" (all its films are chest
    films): said of an abdominal film, that names the wrong organ. A phrasing is kept when
    each class it names (``label_mentions``) is the one the heads (or the header) read first
    for that task, at one half or more, or the task is not read.
    """
    tasks = [t for t in ("modality", "organ", "plane") if t in heads or t in (header or {})]
    read = {t: r[0][0] for t, r in read_labels(heads, vector, embedder, tasks, header).items()
            if r and r[0][1] >= 0.5}
    return Counter({w: n for w, n in said.items()
                    if all(t not in read or read[t] in named
                           for t, named in label_mentions(w).items())})


def label_answer(question: str, vector: np.ndarray, heads: dict[str, Head], embedder: str,
                 phrasings: dict[tuple[str, str], Counter[str]],
                 header: Mapping[str, str] | None = None) -> LabelAnswer | None:
    """The answer to an open question about the image's modality, organ or plane, or None.

    None when the question asks something else, or neither the library's heads nor the
    image's header speak to that task.
    ``vector`` is the image's vector from ``embedder``; ``phrasings`` is ``label_phrasings``
    of the library's pairs; ``header`` as in ``read_labels``.
    """
    task = open_label_question(question)
    if task is None or (task not in heads and task not in (header or {})):
        return None
    ranked = read_labels(heads, vector, embedder, [task], header).get(task)
    if not ranked:  # the header names a class no head knows, and not this task's
        return None
    label, p = ranked[0]
    said = phrasings.get((task, label), Counter())
    total = sum(said.values())
    said = _fitting(said, heads, vector, embedder, header)
    if said:
        words, n = said.most_common(1)[0]
        how = (f"the library's {label} images were answered '{words}' {n} of {total} times "
               "to this kind of question")
    else:
        how = (f"the library's {total} answers to this kind of question about a {label} image "
               "name another modality, organ or plane than this image reads as" if total else
               f"the library holds no answer to this kind of question about a {label} image")
        words, n, total = class_words(label), 0, 0
    score = p * (n + 1) / (total + 2)
    source = (f"The image's DICOM header gives {label}" if task in (header or {}) else
              f"The library's {task} classifier gives {label} {p:.2f}")
    source += knows_only(heads, task, dict(header or {}))
    return LabelAnswer(words, task, label, p, n, total, score,
                       f"Answer: {words}. {source}; {how}.", task in (header or {}))


def knows_only(heads: dict[str, Head], task: str, header: Mapping[str, str]) -> str:
    """The caveat for a plane the head read: it calls a plane it never saw one it knows."""
    if task != "plane" or task in header:
        return ""
    return (f" (it knows {' and '.join(heads[task].classes)} only: a section or view of "
            "another plane would be read as one of those)")


def choice_answer(question: str, vector: np.ndarray, heads: dict[str, Head], embedder: str,
                  header: Mapping[str, str] | None = None) -> LabelAnswer | None:
    """"Is this a CT or an MRI?": the offered class the head (or header) reads likelier.

    None when the question offers no such choice (``choice_question``), or offers a class
    the task's head was never shown (a coronal section, an ultrasound) and the header does not
    give the task: the head cannot weigh what it does not know. When the offered classes
    together read below one half, the answer is the class read ("CT", neither of those
    offered), at one minus their probability. The answer is in plain words ("MRI"), so that
    *think* can bind the planner's answer to it.
    """
    asked = choice_question(question)
    header = dict(header or {})
    if asked is None:
        return None
    task, offered = asked
    if task not in header and (task not in heads
                               or any(c not in heads[task].classes for c in offered)):
        return None
    ranked = read_labels(heads, vector, embedder, [task], header).get(task)
    if not ranked:
        return None
    probs = dict(ranked)
    best = max(offered, key=lambda c: probs.get(c, 0.0))
    p_offered = sum(probs.get(c, 0.0) for c in offered)
    top = ranked[0][0]
    source = (f"The image's DICOM header gives {task} {header[task]}" if task in header else
              f"The library's {task} classifier gives "
              + ", ".join(f"{c} {p:.2f}" for c, p in ranked) + knows_only(heads, task, header))
    def words(c: str) -> str:  # plain words, as in a description
        return c if task == "plane" else class_words(c)

    if p_offered < 0.5:  # the class read, not one offered
        label, p = top, 1.0 - p_offered
        neither = f" (neither of {' and '.join(words(c) for c in offered)})"
    else:
        label, p, neither = best, probs.get(best, 0.0), ""
    said = words(label)[0].upper() + words(label)[1:]
    return LabelAnswer(said, CHOICE, label, p, 0, 0, p,
                       f"Answer: {said}{neither}. {source}.", task in header)


def describe_answer(question: str, vector: np.ndarray, heads: dict[str, Head],
                    embedder: str, header: Mapping[str, str] | None = None) -> LabelAnswer | None:
    """What the image is, from every whole-image head, for "Describe this image", or None.

    None when the question asks something else (``describe_question``) or the library has
    none of the modality, organ and plane heads. The answer names each head's class ("Axial CT
    of the head"); its score is the product of their probabilities (all of them
    right), and the summary names the classes each head knows (a plane head of axial and
    frontal calls a lateral film one of those) and that none of them reads a finding.

    ``header`` is what the image's DICOM header says (``read_labels``).
    """
    if not describe_question(question):
        return None
    header = dict(header or {})
    tasks = [t for t in _DESCRIBED if t in heads or t in header]
    ranked = read_labels(heads, vector, embedder, tasks, header)
    if not ranked:
        return None
    top = {t: r[0] for t, r in ranked.items()}
    allowed = PROJECTIONS.get(top["modality"][0]) if "modality" in top else None
    if allowed is not None and "plane" in top:
        # a plane the named modality has: the joint reading can still rank "axial" first
        # over a film (the modality head unsure); held out, one abdomen was "Axial X-ray"
        fits = [c for c in ranked["plane"] if c[0] in allowed]
        if fits:
            top["plane"] = fits[0]
        else:
            del top["plane"]
    # plain words ("Axial CT of the head"), so that think can bind the planner's answer to open
    # with them (``agent.planner.offer.bind_answer`` takes letters, digits and hyphens)
    words = {t: label if t == "plane" else class_words(label)
             for t, (label, _) in top.items()}
    said = " ".join(w for w in (words.get("plane", ""), words.get("modality", "image")) if w)
    said = said[0].upper() + said[1:]
    if "organ" in words:
        said += f" of the {words['organ']}"
    p = float(np.prod([q for _, q in top.values()]))
    implied = ("plane" in top and "plane" not in header and allowed is not None
               and len([c for c in heads["plane"].classes if c in allowed]) == 1)
    read = "; ".join(
        f"plane {label} (its classifier knows {' and '.join(heads[t].classes)}; a "
        f"{words['modality']} has only {label} of those)" if t == "plane" and implied else
        f"{t} {label} {q:.2f} (of {', '.join(heads[t].classes)})"
        for t, (label, q) in top.items() if t not in header)
    given = ", ".join(f"{t} {label}" for t, (label, _) in top.items() if t in header)
    unknown = unknown_to_heads(heads, header)
    why = (f"The DICOM header gives {given}. " if given else "") + (
        f"The library's classifiers give {read}. " if read else "") + (
        f"The library's classifiers know nothing of such an image: {unknown}. " if unknown else "")
    return LabelAnswer(said, DESCRIBE, "/".join(label for label, _ in top.values()), p, 0, 0, p,
                       f"Answer: {said}. {why}These tell what the image is, not what it shows: "
                       "no offline tool here reads a finding.", set(top) <= set(header))
