"""What *rethink* checks: whether each claim is backed by evidence and the tools agree.

Pure functions over the proposal and the evidence list, so the rules are testable without a
graph. A claim is supported when it cites at least one existing, successful evidence item and
every number it states appears in the cited evidence (within a small tolerance): a small
planner that invents "12 mm" is caught here, not by trusting it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.answer import Claim, FinalAnswerArgs, ProposedClaim
from tools.evidence import Evidence

_NUMBER = re.compile(r"(?<![\w.])(?<!\w-)[-+]?\d+(?:\.\d+)?")
_REL_TOL = 0.05


@dataclass
class ReviewResult:
    """The outcome of checking a proposal."""

    supported: list[Claim] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every claim is supported and there is at least one."""
        return not self.problems and bool(self.supported)


def numbers_in(text: str) -> list[float]:
    """The numbers written in ``text`` (integers and decimals)."""
    return [float(m) for m in _NUMBER.findall(text)]


def _evidence_numbers(ev: Evidence) -> list[float]:
    vals = numbers_in(ev.summary)
    for m in ev.measurements:
        vals.append(m.value)
    for b in ev.boxes:
        vals.extend(b.xyxy)
    for a in ev.assertions:
        if a.probability is not None:
            vals.extend([a.probability, a.probability * 100])
    return vals


def _matches(x: float, pool: Sequence[float]) -> bool:
    return any(abs(x - y) <= max(_REL_TOL * abs(y), 0.051) for y in pool)


def check_claim(claim: ProposedClaim, evidence: dict[str, Evidence]) -> str | None:
    """Why ``claim`` is not supported by ``evidence``, or None when it is."""
    label = f"claim {claim.statement[:80]!r}"
    if not claim.evidence_ids:
        return f"{label} cites no evidence"
    missing = [i for i in claim.evidence_ids if i not in evidence]
    if missing:
        return f"{label} cites {', '.join(missing)}, which do not exist"
    failed = [i for i in claim.evidence_ids if evidence[i].status != "ok"]
    if failed:
        return f"{label} cites failed tool calls {', '.join(failed)}"
    pool: list[float] = []
    for i in claim.evidence_ids:
        pool.extend(_evidence_numbers(evidence[i]))
    # Evidence ids and image ids contain digits of their own; ignore those.
    text = re.sub(r"\b(E\d+|img-[0-9a-f]+)\b", "", claim.statement)
    unsupported = [x for x in numbers_in(text) if not _matches(x, pool)]
    if unsupported:
        nums = ", ".join(f"{x:g}" for x in unsupported)
        cited = ", ".join(claim.evidence_ids)
        return f"{label} states {nums}, which {cited} do not contain"
    return None


def find_contradictions(evidence: Sequence[Evidence]) -> list[str]:
    """Pairs of successful tool results that assert opposite things about one finding."""
    seen: dict[str, tuple[Evidence, bool]] = {}
    out: list[str] = []
    for ev in evidence:
        if ev.status != "ok":
            continue
        for a in ev.assertions:
            key = a.finding.strip().lower()
            if key in seen and seen[key][1] != a.present:
                other, present = seen[key]
                out.append(
                    f"{other.id} ({other.tool}) says {key} is "
                    f"{'present' if present else 'absent'}, but {ev.id} ({ev.tool}) says "
                    f"{'present' if a.present else 'absent'}"
                )
            seen.setdefault(key, (ev, a.present))
    return out


def review(proposal: FinalAnswerArgs, evidence: Sequence[Evidence]) -> ReviewResult:
    """Check every claim of ``proposal`` and look for contradictions among the evidence."""
    by_id = {e.id: e for e in evidence}
    result = ReviewResult(contradictions=find_contradictions(evidence))
    if not proposal.claims:
        if any(e.status == "ok" for e in evidence):
            result.problems.append(
                "the answer makes no claim; state each finding with the evidence ids behind it"
            )
        else:
            result.problems.append("there is no evidence yet; call a tool to look at the image")
        return result
    for claim in proposal.claims:
        why = check_claim(claim, by_id)
        if why is None:
            result.supported.append(
                Claim(
                    statement=claim.statement, evidence_ids=list(dict.fromkeys(claim.evidence_ids))
                )
            )
        else:
            result.problems.append(why)
            result.dropped.append(claim.statement)
    return result
