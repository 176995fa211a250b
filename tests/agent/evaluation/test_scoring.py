"""Grading a free-text reply against the reference, per answer type."""

from __future__ import annotations

import pytest

from agent.evaluation.scoring import grade


@pytest.mark.parametrize(
    ("text", "answer", "kind", "ok"),
    [
        ("No focal lesion found: 0 lesions.", "no", "yesno", True),
        ("There is no lesion in this image.", "yes", "yesno", False),
        ("Yes, 1 focal lesion found.", "yes", "yesno", True),
        ("There are two lesions.", "2", "count", True),
        ("Uncertain (confidence 0.29): 3 focal lesions found", "3", "count", True),
        ("The largest lesion is 12.4 mm across.", "13.1", "number", True),
        ("The largest lesion is 9 mm across.", "13.1", "number", False),
        ("L1 in the upper right of the image (patient's left side)", "left", "choice", True),
        ("L1 in the upper right of the image", "upper right", "choice", True),
        ("upper left or lower right", "lower right", "choice", False),
    ],
)
def test_grading(text, answer, kind, ok):
    opts = {"choice": ["upper left", "upper right", "lower left", "lower right"]}.get(kind)
    if answer in ("left", "right"):
        opts = ["left", "right"]
    assert grade(text, answer, kind, options=opts, tolerance=2.0).correct is ok


def test_open_answers_by_exact_match_and_token_recall():
    from agent.evaluation.scoring import open_scores

    s = open_scores("CT.", "CT")
    assert s.exact and s.token_recall == 1.0
    # a lead-in and a trailing sentence do not stop the match; hyphens and articles are spelling
    assert open_scores("The answer is X-ray. Frontal view.", "Xray").exact
    assert open_scores("Uncertain (confidence 0.40): It is the 4th ventricle.",
                       "4th ventricle").exact
    # a sentence that contains the answer: not an exact match, full recall
    s = open_scores("An MRI of the brain.", "MRI")
    assert not s.exact and s.token_recall == 1.0
    s = open_scores("Bilateral effusions.", "bilateral pleural effusion")
    assert not s.exact and s.token_recall == 1 / 3
    assert open_scores("", "CT").token_recall == 0.0
