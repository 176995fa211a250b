"""Which kinds of question a library's case-based answers can be trusted on: the table, read.

A library built from labelled pairs answers every question it has a model or a neighbour for,
but on real images it is right more often than the commonest answer only for some kinds of
question (modality, size, attributes), and less often for others (position, abnormality,
open organ and plane questions: VQA-RAD dev, ``bench/real_answers.py``). ``medloop library
train`` measures that per kind, cross-validated by image inside the library
(``retrievers.reliability``), and saves the table here as ``reliability.json``. At answer time
the question's kind is read off its nearest library questions (``predict_kind``), and
``case_answer`` withholds an answer of a kind on which the cases did no better than the
commonest answer: the agent then abstains and says what it could not check, instead of
passing a coin toss on as an answer.

The table counts the questions the cases and the commonest answer disagree on (``wins``,
``losses``), so each verdict carries how often chance alone would give its lead
(``sign_test``). The verdict itself stays "more right than the commonest answer" (``ALPHA``
0.5): stricter levels, measured on the dev set, withheld answers as often right as those kept,
and left the kinds that come out level with the majority (COLOR, ORGAN) as they were, for
their questions are mostly read as other kinds (``bench/README.md``, "How sure the table is").

A kind is the question's category (VQA-RAD's PRES, POS, ABN, MODALITY, ...; any label a site
gives) and whether it is closed (yes/no) or open: ``ABN/closed``. One reading overrides both
the label and the neighbours: a yes/no question that asks whether something is normal
(``tools.question_form.asks_normality``: "Is the heart size normal?", labelled SIZE; "Is
there gallbladder pathology?", labelled PRES) is ``ABN/closed``, in the table and at answer
time (``read_kind``). Its answer turns on a finding, whatever else it names; counted under
their labels, such questions had ridden on the verdicts of kinds the cases answer well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.embedders import l2_normalise
from tools.question_form import asks_normality

__all__ = ["ALPHA", "K_KIND", "MIN_ANSWERED", "NORMALITY", "RELIABILITY_FILE", "TABLE_VERSION",
           "KindScore", "Reliability", "kind_key", "load_reliability", "predict_kind", "read_kind",
           "save_reliability", "sign_test", "table_is_current"]

RELIABILITY_FILE = "reliability.json"
TABLE_VERSION = 11
"""Bumped when the kinds or the answers they score change meaning (2: multi-category labels
count as their first category, ATRIB as ATTRIB; 3: open questions about the image's modality,
organ or plane are answered by the heads, ``retrievers.label_answers``; 4: yes/no plane
questions read the plane jointly with the modality, ``retrievers.heads.joint_plane``; 5:
yes/no questions a head answers are left out of their kind, ``case_answers.never_withheld``;
6: the questions the cases and the commonest answer disagree on are counted, ``sign_test``;
7: a yes/no question asking whether something is normal counts as ``NORMALITY``,
``read_kind``; 8: not one about a finding it names, "Is the abnormality hyperintense?"; 9:
"healthy" and "diseased" ask about normality too, "the left renal abnormality" names a
finding; 10: a question counts as closed by its form, as answer time reads it, not by its
label, and "Any evidence of...?" is one, ``tools.question_form.is_closed_question``; 11:
"Is there epidural or subdural hematoma?" asks yes or no, ``is_either_or``), so a stale
table is measured again (``table_is_current``)."""
NORMALITY = "ABN"
"""The category a yes/no question about normality is counted under (VQA-RAD's name for it)."""
K_KIND = 7
"""Library questions that vote on a new question's kind (MiniLM cosine, same closed/open)."""
MIN_ANSWERED = 5
"""Fewer cross-validated answers of a kind than this: too few to call it reliable."""
ALPHA = 0.5
"""A kind is reliable when its lead over the commonest answer would arise by chance at most
this often (``sign_test``). 0.5 is exactly "more questions won than lost", the verdict the
table has always given; 0.05, 0.1, 0.2 and 0.35 were measured on the dev set's fold libraries
and each withheld more right answers without raising the accuracy of those kept
(``bench/README.md``)."""


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` of ``wins + losses`` coin flips).

    ``wins`` are questions the cases got right and the commonest answer wrong, ``losses`` the
    reverse; questions both got right or both wrong say nothing about which is better. 1.0
    when they never disagree.
    """
    n = wins + losses
    if wins <= 0:
        return 1.0
    # exact (a big library's thousands of disagreements overflow a float 2 ** n)
    return float(Fraction(sum(math.comb(n, k) for k in range(wins, n + 1)), 2 ** n))


_SPELLINGS = {"ATRIB": "ATTRIB"}
"""VQA-RAD's other spelling of a category (as ``medloop eval`` normalises it)."""


def kind_key(category: str | None, closed: bool) -> str | None:
    """``CATEGORY/closed`` or ``CATEGORY/open``; None without a category.

    A multi-category label counts as its first category ("PRES, ATTRIB" is PRES), as the
    evaluation report counts it.
    """
    primary = (category or "").split(",")[0].strip().upper()
    if not primary:
        return None
    return f"{_SPELLINGS.get(primary, primary)}/{'closed' if closed else 'open'}"


def read_kind(category: str | None, closed: bool, question: str) -> str | None:
    """The kind a labelled pair is counted under; None without a label.

    ``ABN/closed`` for a yes/no question about normality (``asks_normality``), else its
    label's (``kind_key``).
    """
    key = kind_key(category, closed)
    return key if key is None else _normality_kind(closed, question) or key


def _normality_kind(closed: bool, question: str) -> str | None:
    """``ABN/closed`` for a yes/no question about normality, else None.

    The one place the table (``read_kind``) and answer time (``predict_kind``) take it from.
    """
    return kind_key(NORMALITY, True) if closed and asks_normality(question) else None


@dataclass(frozen=True)
class KindScore:
    """One kind of question, cross-validated by image inside the library.

    ``answered`` questions of ``n`` got an answer from the cases; of those, ``expert`` were
    right, and ``majority`` would have been right answering ``majority_answer`` (the commonest
    answer of the kind in the fitting folds). ``wins`` of them the cases got right and the
    commonest answer wrong, ``losses`` the reverse (``expert - majority == wins - losses``).
    """

    kind: str
    n: int
    answered: int
    expert: int
    majority: int
    majority_answer: str
    wins: int
    losses: int

    @property
    def p_value(self) -> float:
        """How often chance alone would give the cases this many wins (``sign_test``)."""
        return sign_test(self.wins, self.losses)

    @property
    def reliable(self) -> bool:
        """Enough answers, and a lead over the commonest answer that chance gives rarely enough.

        That is at most ``ALPHA`` of the time; at 0.5, more of them right than wrong.
        """
        return self.answered >= MIN_ANSWERED and self.p_value <= ALPHA

    def describe(self) -> str:
        """The measurement in words, for the evidence the planner and the user read.

        It does not name the commonest answer: a small planner copies any yes or no it reads.
        """
        if not self.answered:
            return f"no cross-validated answer of this kind ({self.kind})"
        said = (f"on {self.answered} questions of this kind ({self.kind}) in cross-validation, "
                f"the cases were right {self.expert / self.answered:.0%} of the time, and "
                f"always giving the commonest answer {self.majority / self.answered:.0%}")
        if self.expert > self.majority and not self.reliable:
            said += (f", a difference chance alone gives {self.p_value:.0%} of the time "
                     f"({self.wins} questions won, {self.losses} lost)")
        return said


@dataclass
class Reliability:
    """The per-kind table of one library, with how it was measured."""

    kinds: dict[str, KindScore]
    folds: int
    seed: int

    def as_json(self) -> dict[str, Any]:
        """The ``reliability.json`` content (each kind with its verdict, for readers)."""
        return {"version": TABLE_VERSION, "folds": self.folds, "seed": self.seed, "alpha": ALPHA,
                "kinds": {k: {**asdict(v), "p_value": round(v.p_value, 4), "reliable": v.reliable}
                          for k, v in sorted(self.kinds.items())}}


def save_reliability(root: str | Path, rel: Reliability) -> Path:
    """Write ``ROOT/reliability.json`` atomically; returns its path."""
    path = Path(root) / RELIABILITY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rel.as_json(), indent=1))
    tmp.replace(path)
    return path


def load_reliability(root: str | Path) -> Reliability | None:
    """The table saved in ``ROOT``, or None when the library has none (nothing is withheld).

    A table measured before the disagreements were counted (version < 6) is read with the
    fewest disagreements its counts allow (``expert - majority`` wins, or as many losses): its
    verdicts stay what they were, and a stricter ``ALPHA`` can only withhold more, until
    ``medloop library train`` measures it again.
    """
    path = Path(root) / RELIABILITY_FILE
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    fields = set(KindScore.__dataclass_fields__) - {"wins", "losses"}
    kinds = {}
    for k, v in d["kinds"].items():
        lead = int(v["expert"]) - int(v["majority"])
        kinds[k] = KindScore(**{f: v[f] for f in fields}, wins=int(v.get("wins", max(lead, 0))),
                             losses=int(v.get("losses", max(-lead, 0))))
    return Reliability(kinds, int(d["folds"]), int(d["seed"]))


def table_is_current(root: str | Path) -> bool:
    """Whether ``ROOT`` holds a table measured with this version's kinds."""
    path = Path(root) / RELIABILITY_FILE
    try:
        return bool(json.loads(path.read_text()).get("version") == TABLE_VERSION)
    except (OSError, ValueError):
        return False


def predict_kind(categories: Sequence[str | None], closed: Sequence[bool],
                 question_vectors: np.ndarray, question_vector: np.ndarray, is_closed: bool,
                 k: int = K_KIND, question: str = "") -> str | None:
    """The kind of a question: the weighted vote of its ``k`` nearest library questions.

    Only library questions of the same closed/open type vote, weighted by cosine;
    ``categories[i]``, ``closed[i]`` and row ``i`` of ``question_vectors`` describe library
    question ``i``. None when none has a category. A yes/no ``question`` about normality is
    ``ABN/closed`` whatever its neighbours are (``read_kind``), as the table counts it.
    """
    rows = [i for i, (c, cl) in enumerate(zip(categories, closed, strict=True))
            if c and cl == is_closed]
    if not rows:
        return None
    if (normality := _normality_kind(is_closed, question)) is not None:
        return normality
    sims = np.asarray(question_vectors)[rows] @ l2_normalise(
        np.asarray(question_vector, np.float64).reshape(1, -1))[0]
    votes: dict[str, float] = {}
    for j in np.argsort(-sims)[:k].tolist():
        key = kind_key(categories[rows[j]], is_closed)
        if key is not None:
            votes[key] = votes.get(key, 0.0) + max(float(sims[j]), 0.0)
    return max(votes, key=lambda key: votes[key]) if votes else None
