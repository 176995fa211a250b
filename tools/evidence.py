"""Evidence: what a tool observed, in a form the planner reads and the UI draws.

Every tool returns one ``Evidence`` item. The agent numbers them (``E1``, ``E2``, ...) in the
order the calls were made, and the final answer cites those ids. Evidence is kept small and
JSON-able because it lives in the graph state and so in every checkpoint: masks and pixel arrays
stay in the image store and are referenced by key.

Coordinates are pixels of the stored 2D image, boxes are ``[x0, y0, x1, y1]`` (XYXY, x to the
right, y down, x1/y1 exclusive). Physical values carry their unit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PIXELS = "pixels"
"""``data["observes"]`` of a tool that reads the picture itself (intensity statistics, sizes,
burned-in text, a window): its evidence answers questions about the picture, never about what
the picture shows (``agent.trust.agreement.pixels_only``)."""


class Box(BaseModel):
    """An axis-aligned box in pixel coordinates, XYXY."""

    model_config = ConfigDict(frozen=True)

    xyxy: tuple[float, float, float, float]
    label: str = ""
    score: float | None = Field(default=None, ge=0.0, le=1.0)


class Measurement(BaseModel):
    """A number with its unit and where its scale came from."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: float
    unit: str
    # The spacing the value was computed with, (row, column) in mm per pixel; None when the
    # value is unitless or in pixels because the image has no trustworthy spacing.
    spacing_mm: tuple[float, float] | None = None
    # Optional line from (x, y) to (x, y) in pixels, so the UI can draw what was measured.
    line: tuple[float, float, float, float] | None = None


class Assertion(BaseModel):
    """A tool's statement about a finding, used to detect contradictions between tools."""

    model_config = ConfigDict(frozen=True)

    finding: str
    present: bool
    probability: float | None = Field(default=None, ge=0.0, le=1.0)
    # The patient's side the finding is on (``both`` for bilateral), when the tool knows it.
    side: Literal["left", "right", "both"] | None = None
    # How many were found, when the tool counts (a detector); None when it does not.
    count: int | None = Field(default=None, ge=0)


class Evidence(BaseModel):
    """One tool observation. ``summary`` is the sentence the planner reads."""

    id: str = ""
    tool: str
    status: Literal["ok", "error"] = "ok"
    summary: str
    image_id: str | None = None
    # The tool's own quality score in [0, 1] (mask IoU estimate, retrieval similarity,
    # classifier probability), if it has one; it feeds the answer's confidence.
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    boxes: list[Box] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    assertions: list[Assertion] = Field(default_factory=list)
    # Keys of arrays (masks, thumbnails) in the image store.
    mask_keys: list[str] = Field(default_factory=list)
    # Ids of images this tool stored (a re-windowed CT, say): the agent adds them to the
    # conversation's images so the planner can pass them to other tools.
    new_image_ids: list[str] = Field(default_factory=list)
    # Small JSON-able extras specific to one tool (e.g. retrieved case ids).
    data: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    elapsed_s: float = 0.0

    def for_prompt(self) -> str:
        """One line for the planner: id, tool, status and what was seen."""
        tag = "" if self.status == "ok" else " [FAILED]"
        return f"{self.id} ({self.tool}{tag}): {self.summary}"


def merge_evidence(left: list[Evidence], right: list[Evidence]) -> list[Evidence]:
    """Graph-state reducer: append new items, replacing any with the same id."""
    if not right:
        return left
    by_id = {e.id: i for i, e in enumerate(left)}
    out = list(left)
    for item in right:
        if item.id in by_id:
            out[by_id[item.id]] = item
        else:
            by_id[item.id] = len(out)
            out.append(item)
    return out
