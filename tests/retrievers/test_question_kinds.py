"""retrievers.question_kinds and retrievers.reliability: which kinds of question the cases can
answer better than the commonest answer, measured inside the library and read back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retrievers.case_answers import CaseBank, never_withheld, unreliable_kind
from retrievers.question_kinds import (
    ALPHA,
    MIN_ANSWERED,
    KindScore,
    Reliability,
    kind_key,
    load_reliability,
    predict_kind,
    read_kind,
    save_reliability,
    sign_test,
    table_is_current,
)
from retrievers.reliability import measure_reliability
from retrievers.vqa_library import QAItem
from tests.retrievers.test_vqa_library import HashText


def test_a_kind_is_the_category_and_whether_the_question_is_closed():
    assert kind_key("pres", True) == "PRES/closed"
    assert kind_key(" ABN ", False) == "ABN/open"
    assert kind_key("PRES, ATTRIB", True) == "PRES/closed"  # the first is the primary one
    assert kind_key("ATRIB", False) == "ATTRIB/open"  # VQA-RAD's other spelling
    assert kind_key(None, True) is None and kind_key("", False) is None


@pytest.mark.parametrize(("answered", "expert", "majority", "wins", "losses", "reliable"), [
    (40, 30, 20, 12, 2, True),
    (40, 20, 20, 5, 5, False),  # a tie is no better than the prior
    (40, 15, 20, 3, 8, False),
    (40, 18, 17, 2, 1, True),  # one question ahead (COLOR/closed in a dev fold): more won
    (MIN_ANSWERED - 1, 4, 0, 4, 0, False),  # too few to tell
    (MIN_ANSWERED, 4, 1, 3, 0, True),
])
def test_reliable_means_enough_answers_and_more_right_than_the_commonest(
        answered, expert, majority, wins, losses, reliable):
    score = KindScore("ABN/closed", answered + 3, answered, expert, majority, "no", wins, losses)
    assert score.reliable is reliable
    assert "ABN/closed" in score.describe()
    assert " no " not in f" {score.describe()} "  # never the answer a planner would copy
    # a lead that is not enough says how often chance gives it, and what it rests on
    assert ("chance" in score.describe()) is (expert > majority and not reliable)


@pytest.mark.parametrize(("wins", "losses", "at_05", "at_020"), [
    (12, 2, True, True),  # p = 0.006
    (2, 1, True, False),  # p = 0.5: one question ahead
    (8, 4, True, True),  # p = 0.19
    (6, 4, True, False),  # p = 0.38
    (5, 5, False, False),
])
def test_a_stricter_level_withholds_a_lead_chance_explains(monkeypatch, wins, losses, at_05,
                                                           at_020):
    score = KindScore("COLOR/closed", 40, 40, 20 + wins, 20 + losses, "yes", wins, losses)
    assert ALPHA == 0.5 and score.reliable is at_05 is (wins > losses)
    monkeypatch.setattr("retrievers.question_kinds.ALPHA", 0.2)
    assert score.reliable is at_020
    if wins > losses and not at_020:
        assert f"({wins} questions won, {losses} lost)" in score.describe()


def test_the_sign_test_counts_only_the_disagreements():
    assert sign_test(0, 0) == 1.0 and sign_test(0, 7) == 1.0
    assert sign_test(1, 0) == 0.5 and sign_test(5, 0) == 1 / 32
    assert sign_test(8, 4) == pytest.approx(sum(math.comb(12, k) for k in range(8, 13)) / 4096)
    # "more won than lost" is exactly p <= 0.5, however many disagreements
    assert all((sign_test(w, n - w) <= 0.5) is (w > n - w) for n in (1, 2, 7, 40, 41)
               for w in range(n + 1))
    assert sign_test(1100, 1000) < 0.02  # a big library's count does not overflow


def test_a_table_measured_before_the_disagreements_were_counted_keeps_its_verdicts(tmp_path):
    """A version-5 table (no wins or losses) reads with the fewest disagreements it allows."""
    old = {"version": 5, "folds": 5, "seed": 0, "kinds": {
        "PRES/closed": {"kind": "PRES/closed", "n": 50, "answered": 50, "expert": 35,
                        "majority": 25, "majority_answer": "no", "reliable": True},
        "COLOR/closed": {"kind": "COLOR/closed", "n": 23, "answered": 23, "expert": 17,
                         "majority": 17, "majority_answer": "yes", "reliable": False}}}
    (tmp_path / "reliability.json").write_text(json.dumps(old))
    rel = load_reliability(tmp_path)
    assert rel is not None and not table_is_current(tmp_path)
    assert (rel.kinds["PRES/closed"].wins, rel.kinds["PRES/closed"].losses) == (10, 0)
    assert rel.kinds["PRES/closed"].reliable and not rel.kinds["COLOR/closed"].reliable


def test_the_table_round_trips(tmp_path):
    rel = Reliability({"PRES/closed": KindScore("PRES/closed", 10, 9, 7, 5, "yes", 3, 1)}, 5, 0)
    save_reliability(tmp_path, rel)
    back = load_reliability(tmp_path)
    assert back is not None and back.kinds == rel.kinds and (back.folds, back.seed) == (5, 0)
    assert load_reliability(tmp_path / "elsewhere") is None
    assert table_is_current(tmp_path) and not table_is_current(tmp_path / "elsewhere")
    stale = json.loads((tmp_path / "reliability.json").read_text()) | {"version": 1}
    (tmp_path / "reliability.json").write_text(json.dumps(stale))
    assert not table_is_current(tmp_path)  # measured with other kinds: measure it again


def test_a_question_takes_the_kind_of_its_nearest_library_questions():
    text = HashText()
    questions = ["Is there a mass in the liver?", "Is there a nodule?", "Is this normal?",
                 "Is the image abnormal?", "Where is the mass?"]
    cats = ["PRES", "PRES", "ABN", "ABN", "POS"]
    closed = [True, True, True, True, False]
    qv = text.embed_texts(questions)

    def kind(q, is_closed=True):
        return predict_kind(cats, closed, qv, text.embed_texts([q])[0], is_closed, k=1)

    assert kind("Is there a mass?") == "PRES/closed"
    assert kind("Is the image normal?") == "ABN/closed"
    assert kind("Where is the mass?", is_closed=False) == "POS/open"
    assert predict_kind([None] * 5, closed, qv, qv[0], True) is None


def test_a_yes_no_question_about_normality_is_an_abnormality_question_whatever_its_label():
    """On the dev set "Is the heart size abnormal?" is labelled SIZE and "Is there gallbladder
    pathology?" PRES; the case library's yes/no model cannot see what settles them, yet they
    took the verdicts of SIZE and PRES, which it answers well."""
    assert read_kind("SIZE", True, "Is the heart size abnormal?") == "ABN/closed"
    assert read_kind("PRES", True, "Is there gallbladder pathology?") == "ABN/closed"
    assert read_kind("SIZE", True, "Is the heart enlarged?") == "SIZE/closed"
    assert read_kind("POS", False, "Where is the abnormality?") == "POS/open"  # open: its label
    assert read_kind(None, True, "Is this normal?") is None  # unlabelled pairs stay out
    text = HashText()
    questions = ["Is the heart size normal?", "Is the heart enlarged?"]
    qv = text.embed_texts(questions)
    near = text.embed_texts(["Is the heart size normal?"])[0]
    # its nearest library question is labelled SIZE, and still it is read as ABN
    assert predict_kind(["SIZE", "SIZE"], [True, True], qv, near, True, k=1,
                        question="Is the heart size normal?") == "ABN/closed"
    assert predict_kind(["SIZE", "SIZE"], [True, True], qv, near, True, k=1) == "SIZE/closed"


def test_the_table_counts_normality_questions_under_abnormality():
    """A SIZE-labelled "Is the liver normal in size?" on every case is scored under ABN/closed:
    the SIZE kind's verdict is measured on the questions it names."""
    items, _, vectors = _suite()
    items += [QAItem(f"n{c}", f"case{c}", "Is the liver normal in size?",
                     "no" if c % 4 == 0 else "yes", "yesno", category="SIZE") for c in range(40)]
    qv = HashText().embed_texts([it.question for it in items])
    rel = measure_reliability(items, qv, vectors, {}, "toy", "hash-words", folds=5, seed=0)
    normality = rel.kinds["ABN/closed"]
    assert normality.n == 40 and "SIZE/closed" not in rel.kinds
    assert rel.kinds["PRES/closed"].n == 40
    # its commonest answer is taken from the fitting folds' normality questions too
    assert normality.majority_answer == "yes" and normality.majority == 30
    # and case_answer withholds by that verdict, though its neighbours are labelled SIZE
    cases = sorted(vectors)
    bank = CaseBank.from_arrays(cases, np.stack([vectors[c] for c in cases]), items, qv)
    table = Reliability({"ABN/closed": KindScore("ABN/closed", 40, 40, 15, 25, "no", 5, 15),
                         "SIZE/closed": KindScore("SIZE/closed", 40, 40, 35, 20, "yes", 16, 1)},
                        5, 0)
    q = "Is the liver normal in size?"
    weak = unreliable_kind(table, bank, qv[-1], True, q, "answer-model")
    assert weak is not None and weak.kind == "ABN/closed"


def test_the_table_reads_a_question_closed_or_open_by_its_form_as_answer_time_does():
    """Counted by its label, "Is the brain atrophied or shrunk?" (labelled yes/no) would sit
    among the closed questions while ``case_answer`` reads it as an either-or one; and "Any
    mass?" (an auxiliary left out) among the open ones while it is answered yes or no."""
    items, _, vectors = _suite()
    items += [QAItem(f"e{c}", f"case{c}", "Is the brain atrophied or shrunk?", "no", "yesno",
                     category="SIZE") for c in range(40)]
    items += [QAItem(f"a{c}", f"case{c}", "Any mass in the liver?", "no", "open",
                     category="PRES") for c in range(40)]
    qv = HashText().embed_texts([it.question for it in items])
    rel = measure_reliability(items, qv, vectors, {}, "toy", "hash-words", folds=5, seed=0)
    assert rel.kinds["SIZE/open"].n == 40 and "SIZE/closed" not in rel.kinds
    assert rel.kinds["PRES/closed"].n == 80 and "PRES/open" not in rel.kinds


def _suite(n_cases=40, seed=0):
    """Two kinds: the modality (open), which the image shows, and a yes/no 'mass' question
    whose answer (mostly no) has nothing to do with the image."""
    rng = np.random.default_rng(seed)
    vectors, items = {}, []
    for c in range(n_cases):
        mr = c % 3 == 0
        v = np.array([0.0, 1.0, 0.0] if mr else [1.0, 0.0, 0.0]) + rng.normal(0, 0.05, 3)
        vectors[f"case{c}"] = v.astype(np.float32)
        items.append(QAItem(f"m{c}", f"case{c}", "What modality is this?",
                            "MRI" if mr else "CT", "open", category="MODALITY"))
        items.append(QAItem(f"y{c}", f"case{c}", "Is there a mass?",
                            "yes" if rng.random() < 0.2 else "no", "yesno", category="PRES"))
    return items, HashText().embed_texts([it.question for it in items]), vectors


def test_the_cases_answer_what_the_image_shows_and_not_what_it_does_not():
    items, qv, vectors = _suite()
    rel = measure_reliability(items, qv, vectors, {}, "toy", "hash-words", folds=5, seed=0)
    modality, mass = rel.kinds["MODALITY/open"], rel.kinds["PRES/closed"]
    assert modality.reliable and modality.expert == modality.answered  # neighbours see it
    assert modality.majority < modality.answered  # 'CT' alone misses the MR images
    # the disagreements: every MR image the neighbours named and 'CT' alone missed
    assert (modality.wins, modality.losses) == (modality.answered - modality.majority, 0)
    assert mass.wins - mass.losses == mass.expert - mass.majority
    assert not mass.reliable and mass.expert <= mass.majority  # nothing beats the prior
    assert modality.n == mass.n == 40  # every pair scored once, by a model that never saw it


def _with_label_questions():
    """``_suite`` plus "Is this an MRI?" on every case, and each case's modality label."""
    items, _, vectors = _suite()
    labels = {f"case{c}": {"modality": "mr" if c % 3 == 0 else "ct"} for c in range(40)}
    items += [QAItem(f"l{c}", f"case{c}", "Is this an MRI?",
                     "yes" if c % 3 == 0 else "no", "yesno", category="MODALITY")
              for c in range(40)]
    return items, HashText().embed_texts([it.question for it in items]), vectors, labels


def test_yes_no_questions_a_head_answers_are_not_part_of_their_kind():
    """The head answers "Is this an MRI?" on its own measure: the table leaves it out, so it
    neither props up nor drags down the verdict on the kind's other questions."""
    items, qv, vectors, labels = _with_label_questions()
    rel = measure_reliability(items, qv, vectors, labels, "toy", "hash-words", folds=5, seed=0)
    assert "MODALITY/closed" not in rel.kinds  # every one was answered by the modality head
    assert rel.kinds["PRES/closed"].n == 40 and rel.kinds["MODALITY/open"].n == 40


def test_an_answer_by_a_head_to_a_yes_no_question_is_never_withheld():
    items, qv, vectors, _ = _with_label_questions()
    cases = sorted(vectors)
    bank = CaseBank.from_arrays(cases, np.stack([vectors[c] for c in cases]), items, qv)
    kinds = {k: KindScore(k, 40, 40, 10, 30, "no", 0, 20)  # every kind below the commonest answer
             for k in ("MODALITY/closed", "MODALITY/open", "PRES/closed")}
    rel = Reliability(kinds, 5, 0)
    mri, what = qv[80], qv[0]  # "Is this an MRI?", "What modality is this?"
    assert never_withheld(True, "head:modality") and not never_withheld(False, "head:plane")
    assert unreliable_kind(rel, bank, mri, True, "Is this an MRI?", "head:modality") is None
    assert unreliable_kind(rel, bank, mri, True, "Is this an MRI?", "answer-model") is not None
    # an open one stays subject to the table: the clinicians' words decide there
    assert unreliable_kind(rel, bank, what, False, "What modality is this?",
                           "head:modality") is not None
