"""One evaluation item: a question about one or more images, and its ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tools.image import LoadedImage

__all__ = ["AnswerType", "EvalItem"]

AnswerType = Literal["yesno", "count", "number", "choice", "open"]


@dataclass
class EvalItem:
    """A benchmark item.

    Attributes:
        id: unique within its suite.
        question: the question as the user would ask it.
        answer: the reference answer (for multiple choice a letter or the option's text).
        answer_type: how ``agent.evaluation.scoring.grade`` reads a reply.
        images: file paths (loaded like ``medloop ask`` loads them) or images already in memory
            (the phantoms).
        options: the choices of a multiple-choice or closed question, in order (A, B, ...).
        boxes: ground-truth boxes to ground the answer in, XYXY pixels of the displayed frame.
        value_mm: the true size for measurement error; ``tolerance``: how far off a number may
            be and still be right (answer units).
        meta: anything else the source had (question type, organ, modality...).
    """

    id: str
    question: str
    answer: str
    answer_type: AnswerType = "open"
    images: list[str | LoadedImage] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    value_mm: float | None = None
    tolerance: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The question as sent to the agent: multiple-choice options are listed after it."""
        if self.answer_type == "choice" and self.options and self.meta.get("list_options", True):
            letters = "ABCDEFGH"
            opts = " ".join(f"{letters[i]}) {o}" for i, o in enumerate(self.options))
            return f"{self.question} Options: {opts}"
        return self.question
