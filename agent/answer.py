"""The structured answer, and the planner's proposal that *rethink* checks before it.

The planner proposes through the ``final_answer`` tool (``FinalAnswerArgs``). *rethink* checks
each claim against the evidence, and *answer* turns what survives into a validated ``Answer``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

FINAL_ANSWER_TOOL = "final_answer"


class ProposedClaim(BaseModel):
    """A statement the planner wants to make and the evidence it says supports it."""

    statement: str = Field(description="one finding, in plain words", max_length=400)
    evidence_ids: list[str] = Field(
        default_factory=list, description="ids of the evidence items that support it, e.g. E1"
    )


class FinalAnswerArgs(BaseModel):
    """Call this when the evidence answers the question."""

    answer: str = Field(description="the answer to the user's question", max_length=1200)
    claims: list[ProposedClaim] = Field(
        default_factory=list, description="each finding with the evidence ids behind it"
    )
    confidence: float = Field(
        default=0.5, description="how likely the answer is correct, 0 to 1", ge=0.0, le=1.0
    )


class Claim(BaseModel):
    """A finding in the final answer; it always cites at least one evidence item."""

    statement: str
    evidence_ids: list[str] = Field(min_length=1)


class Answer(BaseModel):
    """What the agent answers.

    Attributes:
        text: the answer in words.
        findings: each claim with the evidence ids behind it (every claim cites evidence).
        confidence: probability in [0, 1] that the answer is right.
        abstained: True when the evidence does not support an answer: the text then says what
            is known and recommends review by a radiologist.
        contradictions: disagreements between tools, named.
        conflicts: where the proposed answer said the opposite of its own cited evidence
            (present/absent, normal, side, count); an answer with any abstains.
        budget_exhausted: True when the round budget ran out before a supported answer.
        notes: what was dropped or adjusted on the way (unsupported claims, repairs).
    """

    text: str
    findings: list[Claim] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    abstained: bool = False
    contradictions: list[str] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)
    budget_exhausted: bool = False
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cited(self) -> Answer:
        for claim in self.findings:
            if not claim.evidence_ids:
                raise ValueError(f"claim {claim.statement!r} cites no evidence")
        return self
