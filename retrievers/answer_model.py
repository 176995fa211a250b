"""A yes/no answer model fitted on a library's labelled question-answer pairs.

The neighbours' vote (``retrievers.case_answers``) answers only when a neighbour was asked a
near paraphrase (a quarter of the dev set's yes/no questions). Most yes/no questions in real
sets are about presence, size or abnormality, where the question's wording carries much of
the answer ("Is the trachea midline?" is nearly always yes) and the image some of it. This
model learns both from the library's own pairs: a logistic regression on the question's unit
vector (the library's text embedder) joined to the image's centred unit vector (its image
embedder), with a temperature fitted on out-of-fold predictions, so that its probability is
a calibrated "yes" on the kind of images and questions it was fitted on.

Measured cross-validated by image on the VQA-RAD dev set (562 yes/no pairs, 5 folds by image,
``bench/answer_model.py``, table in ``bench/case_library.md`` section 4): question and image
59.8 %, image only 59.1 %, question only 55.2 %, against 53.2 % for the majority answer of the
question's category in the fitting folds; adding the question's words (TF-IDF) or question x
image interactions does not beat it. That is the whole of what it knows: question priors and
a coarse view of the image; it cannot see a finding. The strength ``C`` was chosen among
0.3 / 1 / 3 / 10 on those folds (the only setting tuned; 0.1, tried since, is level).

Saved as ``ROOT/answer_model.json`` (plain numbers) by ``medloop library train``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.embedders import centre, l2_normalise
from retrievers.heads import Head, fit_head
from retrievers.vqa_library import QABank, load_qa, normalise_answer
from tools.errors import ToolInputError

__all__ = ["ANSWER_MODEL_FILE", "AnswerModel", "fit_answer_model", "load_answer_model",
           "save_answer_model", "train_and_save", "train_answer_model"]

ANSWER_MODEL_FILE = "answer_model.json"
C = 0.3
"""L2 strength on the raw unit features (see the module docstring)."""
MIN_PAIRS = 20
"""Fewer yes/no pairs than this (or fewer than 5 of either answer) fit no model."""


@dataclass
class AnswerModel:
    """``P(yes | question, image)``: a two-class ``Head`` over ``[question, centred image]``.

    ``image_mean`` is the library images' mean vector (subtracted before normalising, as the
    neighbours are compared); ``text_embedder`` / ``image_embedder`` name the embedders whose
    vectors it takes (it refuses others).
    """

    head: Head
    image_mean: np.ndarray
    text_embedder: str
    image_embedder: str

    def features(self, question_vector: np.ndarray, image_vector: np.ndarray) -> np.ndarray:
        """The ``(1, Dq + Di)`` row the head reads."""
        q = l2_normalise(np.asarray(question_vector, np.float64).reshape(1, -1))
        v = centre(np.asarray(image_vector, np.float64).reshape(1, -1), self.image_mean)
        return np.hstack([q, l2_normalise(v)])

    def p_yes(self, question_vector: np.ndarray, image_vector: np.ndarray) -> float:
        """The calibrated probability that the answer is yes."""
        p = self.head.predict_proba(self.features(question_vector, image_vector))[0]
        return float(p[self.head.classes.index("yes")])

    def as_json(self) -> dict[str, Any]:
        """The ``answer_model.json`` content."""
        return {"head": self.head.as_json(), "image_mean": self.image_mean.round(7).tolist(),
                "text_embedder": self.text_embedder, "image_embedder": self.image_embedder}


def fit_answer_model(question_vectors: np.ndarray, image_vectors: np.ndarray,
                     answers: list[str], text_embedder: str = "",
                     image_embedder: str = "", image_mean: np.ndarray | None = None
                     ) -> AnswerModel:
    """Fit on yes/no pairs: row ``i`` is a question vector, its image's vector, its answer.

    ``answers`` are ``"yes"`` / ``"no"`` (normalised); ``image_mean`` is what image vectors
    are centred on (default: the mean of ``image_vectors``); raises ``ToolInputError`` when there
    are too few pairs or one answer is nearly absent.
    """
    y = [normalise_answer(a) for a in answers]
    if any(a not in ("yes", "no") for a in y):
        raise ToolInputError("the answer model takes yes/no answers only")
    if len(y) < MIN_PAIRS or min(y.count("yes"), y.count("no")) < 5:
        raise ToolInputError(f"too few yes/no pairs to fit an answer model ({y.count('yes')} "
                             f"yes, {y.count('no')} no; needs {MIN_PAIRS} and 5 of each)")
    images = np.asarray(image_vectors, np.float64)
    mean = images.mean(axis=0) if image_mean is None else np.asarray(image_mean, np.float64)
    x = np.hstack([l2_normalise(np.asarray(question_vectors, np.float64)),
                   l2_normalise(centre(images, mean))])
    head = fit_head(x, y, task="answer:yesno", embedder=f"{text_embedder}+{image_embedder}",
                    c=C, standardise=False)
    return AnswerModel(head, mean, text_embedder, image_embedder)


def train_answer_model(library: Any, qa: QABank) -> AnswerModel:
    """The answer model of a library built from labelled pairs (its yes/no pairs only)."""
    rows = sorted(int(i) for i in library.image_index.ids())
    records = library.db.get(rows)
    row_of = {records[r].case_id: r for r in rows if r in records}
    keep = [i for i, it in enumerate(qa.items)
            if it.answer_type == "yesno" and normalise_answer(it.answer) in ("yes", "no")
            and it.image in row_of]
    if not keep:
        raise ToolInputError(f"{library.root}: no yes/no pairs to fit an answer model on")
    all_images = library.image_index.reconstruct(rows)
    image_of_row = {r: all_images[k] for k, r in enumerate(rows)}
    images = np.stack([image_of_row[row_of[qa.items[i].image]] for i in keep])
    # centred on every library image, not only the asked ones, as the neighbours are compared
    return fit_answer_model(qa.vectors[keep], images, [qa.items[i].answer for i in keep],
                            str(qa.embedder.get("name", "")), library.image_embedder.name,
                            image_mean=np.asarray(all_images, np.float64).mean(axis=0))


def save_answer_model(root: str | Path, model: AnswerModel) -> Path:
    """Write ``ROOT/answer_model.json`` atomically; returns its path."""
    path = Path(root) / ANSWER_MODEL_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(model.as_json()))
    tmp.replace(path)
    return path


def load_answer_model(root: str | Path) -> AnswerModel | None:
    """The model saved in ``ROOT``, or None when none was trained."""
    path = Path(root) / ANSWER_MODEL_FILE
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    h = d["head"]
    h["weights"] = np.asarray(h["weights"], np.float64)
    h["bias"] = np.asarray(h["bias"], np.float64)
    return AnswerModel(Head(**h), np.asarray(d["image_mean"], np.float64), d["text_embedder"],
                       d["image_embedder"])


def train_and_save(library: Any) -> dict[str, Any] | None:
    """Fit and save the answer model of a library that holds yes/no pairs; its summary.

    None when the library holds no question-answer pairs (an image-only library).
    """
    try:
        qa = load_qa(library.root)
    except FileNotFoundError:
        return None
    model = train_answer_model(library, qa)
    path = save_answer_model(library.root, model)
    return {"path": str(path), "pairs": model.head.fitted_on,
            "temperature": round(model.head.temperature, 3), "c": C}
