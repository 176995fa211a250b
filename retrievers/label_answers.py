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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from retrievers.heads import Head, predict_heads
from retrievers.vqa_library import QAItem, image_labels, normalise_answer, open_label_question

__all__ = ["LabelAnswer", "label_answer", "label_phrasings"]

_CLASS_WORDS = {"ct": "CT", "mr": "MRI", "xray": "X-ray", "us": "ultrasound", "abd": "abdomen",
                "frontal": "frontal (PA or AP)"}
"""How a class is said when the library has no answer in clinicians' words for it."""


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


def label_answer(question: str, vector: np.ndarray, heads: dict[str, Head], embedder: str,
                 phrasings: dict[tuple[str, str], Counter[str]]) -> LabelAnswer | None:
    """The answer to an open question about the image's modality, organ or plane, or None.

    None when the question asks something else, or the library has no head for that task.
    ``vector`` is the image's vector from ``embedder``; ``phrasings`` is ``label_phrasings``
    of the library's pairs.
    """
    task = open_label_question(question)
    if task is None or task not in heads:
        return None
    label, p = predict_heads(heads, vector, embedder, [task])[task][0]  # plane read jointly
    said = phrasings.get((task, label), Counter())
    if said:
        words, n = said.most_common(1)[0]
        total = sum(said.values())
        how = (f"the library's {label} images were answered '{words}' {n} of {total} times "
               "to this kind of question")
    else:
        words, n, total = _CLASS_WORDS.get(label, label), 0, 0
        how = f"the library holds no answer to this kind of question about a {label} image"
    score = p * (n + 1) / (total + 2)
    return LabelAnswer(words, task, label, p, n, total, score,
                       f"Answer: {words}. The library's {task} classifier gives {label} "
                       f"{p:.2f}; {how}.")
