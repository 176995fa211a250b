"""Run settings: one dataclass, passed to ``build_graph`` and usable as the graph's context.

Nothing here loads a model or touches the disk at construction; the LLM and the tools' weights
are resolved lazily on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tools.store import ImageStore, default_home

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool


@dataclass
class AgentContext:
    """Settings for one agent.

    Attributes:
        llm: a backend spec (``embedded``, ``openai:MODEL@URL``, ``openai-json:MODEL@URL``,
            ``hf:ID_OR_PATH``) or a ready ``BaseChatModel`` (tests pass scripted fakes).
        tools: the tools to offer; None means the default set (``agent.planner.toolset``).
        max_rounds: planner calls allowed per user turn. Each *think* is one round; when they
            are spent the agent answers with what it has and says so.
        tool_timeout_s: wall-clock limit for one tool call; a call over it is reported to the
            model as timed out (its thread is abandoned, not killed: Python cannot kill threads).
        max_parallel_tools: tool calls run at once within one *act* step.
        abstain_below: answers whose confidence falls below this abstain ("refer to a
            radiologist") instead of asserting.
        home: folder for the image store and the default SQLite checkpoints
            (default ``$MEDLOOP_HOME`` or ``~/.cache/medloop``).
        checkpoint: ``sqlite`` (file in ``home``), ``sqlite:PATH``, ``memory``, a
            ``postgresql://`` DSN, or None for no persistence.
        device: ``auto``, ``cpu`` or ``cuda`` for the tools' models.
        route_tools: offer the planner at most this many tools each round, the ones whose
            descriptions best match the question (``agent.planner.route``; a runner-up only when it
            scores close to the best); 0 offers every tool. None (the default) routes to 2 for
            planners that declare ``prefers_tool_routing`` (the embedded 135M model) and
            offers every tool to others.
        answer_samples: once an answer is accepted, ask the planner this many more times
            at ``sample_temperature`` and pool the share that agrees into the confidence
            (self-consistency, ``agent.trust.consistency``); 0 (the default) does not sample.
        sample_temperature: the temperature of those extra answers (above 0, at most 2).
    """

    llm: str | BaseChatModel = "embedded"
    tools: Sequence[BaseTool] | None = None
    max_rounds: int = 5
    tool_timeout_s: float = 60.0
    max_parallel_tools: int = 4
    abstain_below: float = 0.35
    home: str | Path | None = None
    checkpoint: str | None = "sqlite"
    device: str = "auto"
    route_tools: int | None = None
    answer_samples: int = 0
    sample_temperature: float = 0.7
    _store: ImageStore | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        if self.tool_timeout_s <= 0:
            raise ValueError("tool_timeout_s must be positive")
        if self.route_tools is not None and self.route_tools < 0:
            raise ValueError("route_tools must be 0 (offer every tool) or more")
        if self.answer_samples < 0:
            raise ValueError("answer_samples must be 0 (no sampling) or more")
        if not 0 < self.sample_temperature <= 2:
            raise ValueError("sample_temperature must be above 0 and at most 2")

    @property
    def home_dir(self) -> Path:
        """The resolved data folder."""
        return Path(self.home) if self.home is not None else default_home()

    @property
    def store(self) -> ImageStore:
        """The image store under ``home`` (created on first use)."""
        if self._store is None:
            self._store = ImageStore(self.home_dir / "store")
        return self._store

    @property
    def recursion_limit(self) -> int:
        """LangGraph steps allowed per turn: ingest, up to three nodes a round, answer, slack.

        The round budget ends the loop first; this limit is the backstop that guarantees it.
        """
        return 3 * self.max_rounds + 8
