"""Answers from labelled cases: similar images, their most similar questions, their answers.

Retrieval-augmented answering in the manner of in-context VQA (M3Ret, TemMed-Bench): for the
current image and question,

1. the ``k_images`` library images most similar to the image (cosine of image embeddings;
   optionally centred — the library's mean vector removed — so that the component every
   medical image shares does not make unrelated images look alike);
2. among each neighbour's own questions, the one most similar to the question (MiniLM cosine),
   kept when at least ``min_question_sim`` and of the same kind (a yes/no question only takes
   yes/no answers, an open one only open answers);
3. each kept answer votes with weight ``question_sim x max(image_sim, 0.001)``; answers are
   compared normalised (``retrievers.vqa_library.normalise_answer``).

The answer is the heaviest; its **score is the neighbours' agreement**: its share of the vote
weight, times ``n / (n + 1)`` for ``n`` voting neighbours, so that one neighbour agreeing with
itself is not full agreement. No vote: no answer (the tool says the library has no similar
question, rather than guessing).

An open question about what the whole image is ("What plane is this image in?") is answered
by the library's trained heads instead, in the words its clinicians used for that class, and
"Describe this image" by all of them together (``retrievers.label_answers``); a yes/no
question by its heads or its answer model (``yesno_from_library``).

``CaseBank`` is the pure, array-only form (what ``bench/case_library.py`` cross-validates);
``CaseBank.from_library`` reads it from a library built by ``retrievers.vqa_library``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from retrievers.answer_model import AnswerModel, load_answer_model
from retrievers.embedders import Embedder, centre, l2_normalise, shared_minilm
from retrievers.header_labels import header_labels
from retrievers.heads import PROJECTIONS, Head, load_heads, read_labels
from retrievers.label_answers import (
    CHOICE,
    DESCRIBE,
    LabelAnswer,
    choice_answer,
    class_words,
    describe_answer,
    knows_only,
    label_answer,
    label_phrasings,
)
from retrievers.question_kinds import (
    KindScore,
    Reliability,
    kind_key,
    load_reliability,
    predict_kind,
)
from retrievers.similar import LIBRARY_DOMAIN, SHIPPED_DOMAIN
from retrievers.typicality import LIBRARY_IMAGES, flag_if_unlike, library_typicality
from retrievers.vqa_library import (
    QA_FILE,
    QAItem,
    label_question,
    load_qa,
    normalise_answer,
    open_label_question,
)
from tools.base import ImageArgs
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Evidence
from tools.packaged import LITE_MEDSAM, MINILM
from tools.question_form import is_yesno_question
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore

__all__ = [
    "CENTRED",
    "K_IMAGES",
    "MIN_QUESTION_SIM",
    "TOOLS",
    "CaseAnswer",
    "CaseBank",
    "CaseVote",
    "YesNo",
    "answer_from_cases",
    "bank_for",
    "case_answer_tools",
    "is_yesno_question",
    "never_withheld",
    "token_recall",
    "unreliable_kind",
    "yesno_from_library",
]

CENTRED = True
"""Remove the library's mean image vector before comparing: 9 of the 10 learnt poolings gave
better neighbours centred than raw (``bench/case_library.md``), and unrelated images stop
scoring 0.75-0.93 (mean cosine to a random other image ~0 instead of ~0.9)."""
K_IMAGES = 10
"""Neighbour images consulted (of 2 x 4 settings tried on the dev set, see
``bench/case_library.md``)."""
MIN_QUESTION_SIM = 0.75
"""A neighbour's question must be a near paraphrase (MiniLM cosine): at 0.6, questions naming
another plane or organ voted too, and plane and organ questions fell below the majority."""

def token_recall(predicted: str, truth: str) -> float:
    """Share of the true answer's normalised words found in the predicted answer (0..1)."""
    want = normalise_answer(truth).split()
    have = set(normalise_answer(predicted).split())
    return sum(w in have for w in want) / len(want) if want else 0.0


@dataclass(frozen=True)
class CaseVote:
    """One neighbour's vote: which case, how similar its image and its question were."""

    case_id: str
    image_sim: float
    question: str
    question_sim: float
    answer: str
    weight: float


@dataclass(frozen=True)
class CaseAnswer:
    """The neighbours' answer, its agreement score in [0, 1], and every vote behind it.

    ``shares`` maps each normalised answer to its share of the vote weight (highest first).
    """

    answer: str
    score: float
    agreement: float
    shares: list[tuple[str, float]]
    votes: list[CaseVote]


@dataclass
class CaseBank:
    """Library images and their question–answer pairs as arrays.

    ``image_vectors`` ``(M, D)`` are unit rows for ``case_ids`` (after centring when
    ``mean`` is set: ``query`` applies the same); ``question_vectors`` ``(N, Dq)`` are the unit
    question vectors of ``items``; ``case_of_item[i]`` is the row of ``items[i]``'s image.
    """

    case_ids: list[str]
    image_vectors: np.ndarray
    items: list[QAItem]
    question_vectors: np.ndarray
    case_of_item: np.ndarray
    mean: np.ndarray | None = None
    items_of_case: list[list[int]] = field(default_factory=list)
    _phrasings: dict[tuple[str, str], Counter[str]] | None = field(default=None, repr=False,
                                                                   compare=False)

    def phrasings(self) -> dict[tuple[str, str], Counter[str]]:
        """How the bank's pairs answer open label questions, per task and class.

        ``retrievers.label_answers.label_phrasings``, computed once per bank.
        """
        if self._phrasings is None:
            self._phrasings = label_phrasings(self.items)
        return self._phrasings

    @classmethod
    def from_arrays(cls, case_ids: Sequence[str], image_vectors: np.ndarray,
                    items: Sequence[QAItem], question_vectors: np.ndarray,
                    centred: bool = CENTRED) -> CaseBank:
        """A bank from image vectors (rows of ``case_ids``) and the pairs of those images.

        Pairs whose image is not among ``case_ids`` are dropped.
        """
        row = {c: i for i, c in enumerate(case_ids)}
        keep = [i for i, it in enumerate(items) if it.image in row]
        x = np.asarray(image_vectors, np.float32)
        mean = x.mean(axis=0) if centred and len(x) > 1 else None
        bank = cls(list(case_ids), l2_normalise(centre(x, mean) if mean is not None else x),
                   [items[i] for i in keep], l2_normalise(np.asarray(question_vectors)[keep]),
                   np.array([row[items[i].image] for i in keep], int), mean)
        bank.items_of_case = [[] for _ in case_ids]
        for i, c in enumerate(bank.case_of_item.tolist()):
            bank.items_of_case[c].append(i)
        return bank

    @classmethod
    def from_library(cls, library: Any, centred: bool = CENTRED) -> CaseBank:
        """The bank of a ``CaseLibrary`` built by ``retrievers.vqa_library``."""
        qa = load_qa(library.root)
        rows = sorted(int(i) for i in library.image_index.ids())
        records = library.db.get(rows)
        case_ids = [records[r].case_id for r in rows]
        return cls.from_arrays(case_ids, library.image_index.reconstruct(rows), qa.items,
                               qa.vectors, centred)

    def query(self, image_vector: np.ndarray) -> np.ndarray:
        """A query image vector ``(D,)`` in the bank's space (centred like the rows)."""
        v = np.asarray(image_vector, np.float32).reshape(-1)
        return l2_normalise(centre(v, self.mean) if self.mean is not None else v)[0]


def answer_from_cases(bank: CaseBank, image_vector: np.ndarray, question_vector: np.ndarray,
                      question: str, k_images: int = K_IMAGES,
                      min_question_sim: float = MIN_QUESTION_SIM) -> CaseAnswer | None:
    """The neighbours' answer to ``question`` about an image (see the module docstring).

    ``image_vector`` ``(D,)`` comes from the bank's image embedder, ``question_vector``
    ``(Dq,)`` from its text embedder. None when no neighbour has a similar question.
    """
    if not bank.case_ids:
        return None
    sims = bank.image_vectors @ bank.query(image_vector)  # (M,)
    qv = l2_normalise(question_vector)[0]
    yesno = is_yesno_question(question)
    votes: list[CaseVote] = []
    for c in np.argsort(-sims)[:k_images].tolist():
        mine = [i for i in bank.items_of_case[c]
                if (bank.items[i].answer_type == "yesno") == yesno]
        if not mine:
            continue
        qs = bank.question_vectors[mine] @ qv
        best = int(np.argmax(qs))
        if qs[best] < min_question_sim:
            continue
        it = bank.items[mine[best]]
        votes.append(CaseVote(bank.case_ids[c], float(sims[c]), it.question, float(qs[best]),
                              it.answer, float(qs[best]) * max(float(sims[c]), 1e-3)))
    if not votes:
        return None
    weight: dict[str, float] = {}
    for v in votes:
        key = normalise_answer(v.answer)
        weight[key] = weight.get(key, 0.0) + v.weight
    total = sum(weight.values())
    shares = sorted(((a, w / total) for a, w in weight.items()), key=lambda t: -t[1])
    top = shares[0][0]
    shown = max((v for v in votes if normalise_answer(v.answer) == top), key=lambda v: v.weight)
    agreement = shares[0][1]
    return CaseAnswer(answer=shown.answer, score=agreement * len(votes) / (len(votes) + 1),
                      agreement=agreement, shares=shares, votes=votes)


_BANKS: dict[Path, tuple[float, CaseBank]] = {}
_BANKS_LOCK = threading.Lock()


def bank_for(library: Any) -> CaseBank:
    """The library's bank, read once per process (again when its ``qa.jsonl`` changes)."""
    root = Path(library.root)
    stamp = (root / "qa.jsonl").stat().st_mtime if (root / "qa.jsonl").exists() else -1.0
    with _BANKS_LOCK:
        hit = _BANKS.get(root)
        if hit is None or hit[0] != stamp:
            hit = (stamp, CaseBank.from_library(library))
            _BANKS[root] = hit
        return hit[1]


class CaseAnswerArgs(ImageArgs):
    """Arguments of ``case_answer``."""

    question: str = Field(description="the user's question about the image, as asked")
    k: int = Field(default=K_IMAGES, ge=1, le=40,
                   description=f"how many similar images (default {K_IMAGES})")


_DESCRIPTION = (
    "Answer from real labelled cases: finds the library images most similar to this image, "
    "the most similar questions that were asked about them, and reports their answers with "
    "the neighbours' agreement as the score. Use for modality, organ, plane and other "
    "questions that similar cases answer."
)


def _summary(res: CaseAnswer | None, k: int) -> str:
    if res is None:
        return (f"None of the {k} most similar library images was asked a similar question; "
                "the case library cannot answer this.")
    listed = "; ".join(f"{v.case_id} (image {v.image_sim:.2f}, question {v.question_sim:.2f}): "
                       f"'{v.question}' -> {v.answer}" for v in res.votes[:3])
    shares = ", ".join(f"'{a}' {s:.0%}" for a, s in res.shares[:3])
    return (f"Similar cases answer '{res.answer}' (agreement {res.agreement:.0%} of "
            f"{len(res.votes)} neighbours: {shares}). {listed}")


@dataclass(frozen=True)
class YesNo:
    """A yes/no answer from a library model: which one, ``P(yes)``, and why in words.

    ``answer`` is ``""`` when the model asked cannot tell (``summary`` says why).
    """

    answer: str
    p_yes: float
    method: str
    summary: str
    from_header: bool = False
    """Read off the image's DICOM header, not a model."""


def _unknown_class(task: str, value: str, vec: np.ndarray, embedder: str,
                   heads: dict[str, Head], header: dict[str, str]) -> YesNo:
    """"Is this a sagittal section?" / "Is this an ultrasound?" when the head has no such class.

    For a plane, the modality can still rule it out: a lateral view is a film's, a coronal
    section a CT's or MR's (``PROJECTIONS``), so "no" at the probability of the modalities
    without that plane. Otherwise nothing here can tell: the head was never shown such an
    image, and reads a sagittal MR as axial as surely as an axial one (and pydicom's
    ultrasound as an X-ray). That is said, with no answer (the answer ``""``), instead of the
    answer model's guess from the wording: on the dev set it answered "Is this image of a
    saggital plane?" "yes", at 0.88, on an axial image.
    """
    if task == "plane":
        read = read_labels(heads, vec, embedder, ["modality"], header).get("modality", [])
        ruled_out = [(m, p) for m, p in read if value not in PROJECTIONS.get(m, (value,))]
        p_no = sum(p for _, p in ruled_out)
        if p_no >= 0.5:
            names = " or ".join(m for m, _ in ruled_out)
            source = (f"The image's DICOM header gives modality {names}" if "modality" in header
                      else f"The library's modality classifier gives {names} {p_no:.2f}")
            planes = "; ".join(f"{m}: {', '.join(PROJECTIONS[m])}" for m, _ in ruled_out
                               if m in PROJECTIONS)
            return YesNo("no", 1.0 - p_no, "head:modality",
                         f"Answer: no. {source}, and such an image has no {value} plane "
                         f"(its planes: {planes}).")
    knows = ", ".join(heads[task].classes)
    return YesNo("", 0.5, f"head:{task}",
                 f"No answer: the library's {task} classifier knows {knows} only and was never "
                 f"shown {class_words(value)} images, so it cannot tell one from the classes it "
                 f"knows; no offline tool checked the {task}.")


def yesno_from_library(question: str, qvec: np.ndarray, vec: np.ndarray, embedder: str,
                       heads: dict[str, Head], model: AnswerModel | None,
                       header: dict[str, str] | None = None) -> YesNo | None:
    """Answer a yes/no question from the library's trained models, or None.

    A question about what the whole image is ("Is this an MRI?", ``label_question``) is read
    off the image's DICOM header when it names that task (``retrievers.header_labels``),
    else off the trained head of that task when there is one (0.92-1.00 right on the dev set);
    any other yes/no question goes to the answer model (question wording + image, about 62 %
    right on the dev set: it knows priors, not findings), when the library has one.
    """
    asked = label_question(question)
    header = header or {}
    if (asked is not None and asked[0] in heads and asked[0] not in header
            and asked[1] not in heads[asked[0]].classes):
        return _unknown_class(*asked, vec, embedder, heads, header)
    if asked is not None and (asked[0] in header
                              or (asked[0] in heads and asked[1] in heads[asked[0]].classes)):
        task, value = asked
        ranked = read_labels(heads, vec, embedder, [task], header).get(task)
        if ranked:  # none: the header names an image no head knows, and not this task
            p = dict(ranked).get(value, 0.0)
            yes = "yes" if p >= 0.5 else "no"
            source = (f"The image's DICOM header gives {task} {header[task]}" if task in header
                      else f"The library's {task} classifier gives {value} {p:.2f}")
            source += knows_only(heads, task, header)  # what it calls a plane it never saw
            return YesNo(yes, p, f"head:{task}", f"Answer: {yes}. {source}.", task in header)
    if model is None:
        return None
    p = model.p_yes(qvec, vec)
    return YesNo("yes" if p >= 0.5 else "no", p, "answer-model",
                 f"Answer: {'yes' if p >= 0.5 else 'no'} (P(yes) = {p:.2f}, from a model "
                 f"fitted on {sum(model.head.fitted_on.values())} labelled yes/no questions of "
                 f"the library: their wording and their images' overall appearance; it cannot "
                 f"see a finding).")


def _case_answer(store: ImageStore, get_lib: Callable[[], Any],
                 text_embedder: Callable[[], Embedder]) -> Callable[[CaseAnswerArgs], Evidence]:
    def case_answer(args: CaseAnswerArgs) -> Evidence:
        question = " ".join(args.question.split())
        if not question:
            raise ToolInputError("question is empty: pass the user's question")
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        lib = get_lib()
        try:
            bank = bank_for(lib)
        except FileNotFoundError as exc:
            raise ToolInputError(f"{exc}; use another tool") from None
        vec = lib.image_embedder.embed_images([img.display])[0]
        qvec = text_embedder().embed_texts([question])[0]
        res = answer_from_cases(bank, vec, qvec, question, k_images=args.k)
        closed = is_yesno_question(question)
        heads = load_heads(lib.root)
        header = header_labels(img.meta)
        yn = (yesno_from_library(question, qvec, vec, lib.image_embedder.name, heads,
                                 load_answer_model(lib.root), header) if closed else None)
        typ = library_typicality(lib, vec)
        unlike = typ is not None and not typ.inside

        def label(with_heads: dict[str, Head]) -> LabelAnswer | None:
            emb = lib.image_embedder.name
            return (label_answer(question, vec, with_heads, emb, bank.phrasings(), header)
                    or describe_answer(question, vec, with_heads, emb, header)
                    or choice_answer(question, vec, with_heads, emb, header))

        named = None if closed else label(heads)
        if unlike and named is not None and not named.from_header and header:
            # the heads extrapolate on an image unlike the library's: its header still speaks
            named = label({})
        # the question asked, beside the answer (None: the cases have none for it)
        data: dict[str, object] = {"library": str(lib.root), "k": args.k, "answer": None,
                                   "question": question} | _vote_data(res)
        summary = _summary(res, args.k)
        score = res.score if res is not None else 0.0
        if yn is not None and not yn.answer:  # the heads cannot tell: no answer, said why
            data |= {"answer": None, "method": yn.method, "question": question}
            summary, score = yn.summary, 0.0
        elif yn is not None:  # the neighbours' vote stays in ``data``; one answer is stated
            data |= {"answer": yn.answer, "p_yes": round(yn.p_yes, 4), "method": yn.method,
                     "yes_no": yn.answer, "question": question}
            summary = yn.summary
            score = max(yn.p_yes, 1.0 - yn.p_yes)
        if named is not None:  # the head's class in the library's words; the vote stays too
            data |= {"answer": named.answer, "label_answer": named.answer,
                     "method": f"head:{named.task}", "label": named.label,
                     "p_label": round(named.p_label, 4), "said": [named.said, named.of],
                     "question": question}
            summary = named.summary
            score = named.score
        # what the DICOM header gives is neither the cases' answer nor a model's extrapolation:
        # neither the per-kind table nor the image's unlikeness to the library judges it
        from_header = ((named is not None and named.from_header)
                       or (yn is not None and yn.from_header))
        weak = None if from_header else unreliable_kind(
            load_reliability(lib.root), bank, qvec, closed, question, str(data.get("method") or ""))
        data, summary, score = _judged(data, summary, score, question, from_header, unlike, weak)
        ev = Evidence(tool="case_answer", image_id=args.image_id, summary=summary,
                      score=score, data=data, elapsed_s=time.perf_counter() - t0)
        return flag_if_unlike(ev, typ, LIBRARY_IMAGES, flag=not from_header)

    return case_answer


def _vote_data(res: CaseAnswer | None) -> dict[str, object]:
    """The neighbours' vote, as ``case_answer``'s data holds it (empty: no vote)."""
    if res is None:
        return {}
    return {"answer": res.answer, "agreement": round(res.agreement, 4),
            "shares": [[a, round(s, 4)] for a, s in res.shares],
            "votes": [{"case_id": v.case_id, "image_sim": round(v.image_sim, 4),
                       "question": v.question, "question_sim": round(v.question_sim, 4),
                       "answer": v.answer} for v in res.votes]}


def _judged(data: dict[str, object], summary: str, score: float, question: str,
            from_header: bool, unlike: bool, weak: KindScore | None
            ) -> tuple[dict[str, object], str, float]:
    """``case_answer``'s data, summary and score once its answer is judged.

    Withheld when the image is unlike the library's (its cases and models extrapolate) or
    the per-kind table says the cases cannot answer this kind (``weak``). What the DICOM
    header gives is neither the cases' answer nor a model's extrapolation: it stands, and
    says so when the library's classifiers were not read.
    """
    if from_header:
        data = data | {"from_header": True}
        if unlike:
            summary += (" The library's classifiers were not read: the image is unlike every "
                        "image of its case library.")
        return data, summary, score
    if unlike and data.get("answer"):
        return (_withheld(data, question),
                "No answer: the case library's cases and models say nothing about an image "
                "unlike all of theirs; no offline tool checked it.", 0.0)
    if weak is not None and data.get("answer"):
        return (_withheld(data, question) | {"kind": weak.kind, "kind_score": {
                    "answered": weak.answered, "right": weak.expert, "majority": weak.majority,
                    "majority_answer": weak.majority_answer}},
                f"No answer: similar cases cannot answer this kind of question reliably "
                f"({weak.describe()}); no offline tool checked it.", 0.0)
    return data, summary, score


def _withheld(data: dict[str, object], question: str) -> dict[str, object]:
    """``case_answer``'s data with its answer kept for the record (``withheld``), not stated.

    A planner copies any answer it reads, so ``answer`` becomes None (a "no answer" to
    ``question``, ``agent.trust.agreement.declines``) and the yes/no and label go.
    """
    kept = {k: v for k, v in data.items() if k not in ("yes_no", "answer", "label_answer")}
    return kept | {"answer": None, "withheld": data["answer"], "question": question}


def never_withheld(closed: bool, method: str) -> bool:
    """Whether an answer by ``method`` stands whatever its kind's verdict in the table.

    A yes/no question about what the whole image is ("Is this a CT image?",
    ``label_question``) that a trained head answered: the head is measured on its own task
    (9 of 9 such dev questions right, cross-validated by image, against 4-7 for the commonest
    answer), while the question's kind is read off neighbouring questions ("Is this a CT
    image?" read as an abnormality question) or mixes in questions the head does not answer
    (MODALITY/closed holds the contrast questions too). An open one stays subject to the
    table: there the clinicians' words decide, not the class (``retrievers.label_answers``),
    except a description of the whole image (``describe_answer``), which no pair of the
    library asks, so no kind of the table measures it, and a choice among the head's own
    classes ("Is this a CT or an MRI?", ``choice_answer``), answered in the offered words.
    """
    return (closed and method.startswith("head:")) or method in (f"head:{DESCRIBE}",
                                                                 f"head:{CHOICE}")


def unreliable_kind(rel: Reliability | None, bank: CaseBank, qvec: np.ndarray,
                    closed: bool, question: str = "", method: str = "") -> KindScore | None:
    """The library's score for this question's kind, when it is one the cases cannot answer.

    That is, when they did no better there than the commonest answer
    (``retrievers.question_kinds``, the library's ``rel``); None otherwise, without a table,
    or for an answer by a ``method`` that is ``never_withheld``.
    The kind is read off the nearest library questions, except for an open ``question``
    about the image's modality, organ or plane (``open_label_question``), whose kind is that:
    "What plane of section is the brain taken in?" sat among brain questions of other kinds.
    """
    if rel is None or never_withheld(closed, method):
        return None
    task = None if closed else open_label_question(question)
    kind = kind_key(task.upper(), False) if task else predict_kind(
        [it.category for it in bank.items], [it.answer_type == "yesno" for it in bank.items],
        bank.question_vectors, qvec, closed, question=question)
    score = rel.kinds.get(kind) if kind is not None else None
    return score if score is not None and not score.reliable else None


def _has_pairs(deps: ToolDeps) -> bool:
    """Offered over the run's own library when it holds question-answer pairs (``vqa_library``)."""
    return deps.library_has(QA_FILE)


_EXAMPLES = ("What imaging modality was used?",
             "Is this an MRI or a CT?",
             "In which plane is this image taken?",
             "Which organ system is shown?",
             "Is this a T2 weighted image?",
             # yes/no questions about real images: the answer model of the library's
             # labelled pairs is the one expert fitted on such questions
             "Is this image abnormal?",
             "Is there evidence of a fracture?",
             "Is the heart enlarged?",
             "Are the kidneys normal?",
             "Is there a mass in the brain?",
             "Is the lesion larger than 5 cm?")


TOOLS = (
    ToolSpec(
        name="case_answer", description=_DESCRIPTION, args=CaseAnswerArgs,
        build=lambda deps: _case_answer(deps.store, _library(deps), shared_minilm),
        models=(LITE_MEDSAM, MINILM), enabled=_has_pairs, variant="vqa-library",
        examples=_EXAMPLES, domain=LIBRARY_DOMAIN, always_offered=True, precedence=1,
    ),
    ToolSpec(
        name="case_answer", description=_DESCRIPTION, args=CaseAnswerArgs,
        build=lambda deps: _case_answer(deps.store, deps.answers_library(), shared_minilm),
        models=(LITE_MEDSAM, MINILM), enabled=lambda deps: deps.falls_back_on(QA_FILE),
        variant="shipped-library",
        examples=_EXAMPLES, domain=SHIPPED_DOMAIN, always_offered=True,
    ),
)


"""``case_answer``: neighbours' answers from a library of real question-answer pairs. Always
offered beside what the router picks when the run's library holds such pairs: it is the one
expert fitted on real clinicians' questions (on real images the router's pick is often a tool
outside its domain)."""


def _library(deps: ToolDeps) -> Callable[[], Any]:
    """The run's library getter; the tool is only enabled when there is one."""
    if deps.library is None:
        raise ToolFailure("this tool needs a case library (MEDLOOP_LIBRARY)")
    return deps.library


def case_answer_tools(store: ImageStore, library_getter: Callable[[], Any],
                      text_embedder: Callable[[], Embedder] = shared_minilm) -> list[BaseTool]:
    """``case_answer`` over ``store`` images; the library opens on the first call.

    ``library_getter`` returns a ``CaseLibrary`` built by ``retrievers.vqa_library`` (its
    pairs beside it); ``text_embedder`` must be the one its questions were embedded with.
    """
    return [TOOLS[0].bind(_case_answer(store, library_getter, text_embedder), store)]
