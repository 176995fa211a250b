"""rethink's rules, as pure functions."""

from __future__ import annotations

import pytest

from agent.answer import FinalAnswerArgs, ProposedClaim
from agent.trust.checks import check_claim, find_contradictions, numbers_in, review
from tools.evidence import Assertion, Evidence, Measurement


def ev(i, summary="", status="ok", **kw):
    return Evidence(id=f"E{i}", tool=kw.pop("tool", "t"), summary=summary, status=status, **kw)


@pytest.mark.parametrize(
    "text,nums",
    [
        ("area 12.5 mm2 and 3 lesions", [12.5, 3.0]),
        ("ratio -0.45", [-0.45]),
        ("no numbers", []),
        ("img-1a2b", []),  # digits inside a word are not numbers
    ],
)
def test_numbers_in(text, nums):
    assert numbers_in(text) == nums


def test_claim_numbers_must_match_cited_evidence():
    evidence = {
        "E1": ev(
            1,
            "lung area 10234 mm2",
            measurements=[Measurement(name="ctr", value=0.48, unit="ratio")],
        )
    }
    assert (
        check_claim(ProposedClaim(statement="lung area 10234 mm2", evidence_ids=["E1"]), evidence)
        is None
    )
    # within 5 % of a measured value
    assert (
        check_claim(ProposedClaim(statement="CTR is 0.47", evidence_ids=["E1"]), evidence) is None
    )
    why = check_claim(ProposedClaim(statement="CTR is 0.62", evidence_ids=["E1"]), evidence)
    assert why is not None and "0.62" in why


def test_claim_must_cite_existing_successful_evidence():
    evidence = {"E1": ev(1, "x"), "E2": ev(2, "boom", status="error")}
    assert "cites no evidence" in check_claim(
        ProposedClaim(statement="a", evidence_ids=[]), evidence
    )
    assert "E9" in check_claim(ProposedClaim(statement="a", evidence_ids=["E9"]), evidence)
    assert "failed" in check_claim(ProposedClaim(statement="a", evidence_ids=["E2"]), evidence)


def test_evidence_ids_in_the_statement_are_not_numbers():
    evidence = {"E12": ev(12, "normal")}
    assert check_claim(ProposedClaim(statement="see E12", evidence_ids=["E12"]), evidence) is None


def test_contradictions_found_once_per_pair():
    items = [
        ev(1, tool="a", assertions=[Assertion(finding="Effusion", present=True)]),
        ev(2, tool="b", assertions=[Assertion(finding="effusion", present=False)]),
        ev(3, tool="c", assertions=[Assertion(finding="effusion", present=True)]),
        ev(4, tool="d", status="error", assertions=[Assertion(finding="effusion", present=False)]),
    ]
    found = find_contradictions(items)
    assert len(found) == 1 and "E1 (a)" in found[0] and "E2 (b)" in found[0]


def test_review_splits_supported_and_dropped():
    proposal = FinalAnswerArgs(
        answer="x",
        confidence=0.7,
        claims=[
            ProposedClaim(statement="area 5 mm2", evidence_ids=["E1", "E1"]),
            ProposedClaim(statement="area 6 mm2", evidence_ids=["E1"]),
        ],
    )
    r = review(proposal, [ev(1, "area 5 mm2")])
    assert [c.statement for c in r.supported] == ["area 5 mm2"]
    assert r.supported[0].evidence_ids == ["E1"]  # de-duplicated
    assert r.dropped == ["area 6 mm2"] and not r.ok


def test_review_without_claims_asks_for_evidence_or_claims():
    assert "no evidence yet" in review(FinalAnswerArgs(answer="x"), []).problems[0]
    assert "makes no claim" in review(FinalAnswerArgs(answer="x"), [ev(1, "y")]).problems[0]
