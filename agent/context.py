"""Run settings: one dataclass, passed to ``build_graph`` and usable as the graph's context.

Nothing here loads a model or touches the disk at construction; the LLM and the tools' weights
are resolved lazily on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tools.store
from tools.models.registry import VisionConfig
from tools.store import ImageStore

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

    from tools.ingest.pseudonym import SiteKey


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
        home: folder for the image store, the default SQLite checkpoints, fitted calibrations
            and the demo case library (default ``~/.cache/medloop``; ``from_env`` reads
            ``MEDLOOP_HOME``).
        checkpoint: ``sqlite`` (file in ``home``), ``sqlite:PATH``, ``memory``, a
            ``postgresql://`` DSN, or None for no persistence.
        device: ``auto``, ``cpu`` or ``cuda`` for the tools' models.
        segmenter: ``lite-medsam`` (packaged) or ``hf:ID_OR_PATH`` (transformers SAM / SAM 2).
        detector: ``lungs-finder`` (packaged) or ``hf:ID_OR_PATH`` (OWLv2 / Grounding DINO).
        classifier: None (the case library's kNN), ``open_clip:REF`` (zero-shot) or
            ``hf:ID_OR_PATH`` (a supervised transformers image classifier).
        library: a case library folder (``medloop index build``) for the retrieval tools;
            None uses the demo library, built in the background on first use.
        calibration: None looks up the map fitted for this planner configuration
            (``$home/calibration/``, then the shipped ones); ``none`` uses raw confidences;
            anything else is the path of a calibration file.
        llm_threads: CPU threads for the embedded planner (None: its default rule).
        llm_temperature: the planner's sampling temperature (0: greedy, reproducible).
        deid_secret: the site secret that keys de-identification (at least 32 characters), so
            one study always gets the same pseudonymous UIDs and date shift; None uses the
            secret generated once under ``home`` (``site_secret``, mode 0600).
        raise_tool_errors: re-raise an unexpected exception inside a tool (a bug, not one of
            medloop's named errors) out of the graph instead of reporting "crashed" to the
            planner; tests turn it on, as LangGraph's ``ToolNode(handle_tool_errors=False)``.
            Either way the traceback is logged (logger ``medloop.tools``).
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
    segmenter: str = "lite-medsam"
    detector: str = "lungs-finder"
    classifier: str | None = None
    library: str | Path | None = None
    calibration: str | Path | None = None
    llm_threads: int | None = None
    llm_temperature: float = 0.0
    raise_tool_errors: bool = False
    deid_secret: str | None = field(default=None, repr=False)
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
        if not 0 <= self.llm_temperature <= 2:
            raise ValueError("llm_temperature must be from 0 (greedy) to 2")
        if self.llm_threads is not None and self.llm_threads < 1:
            raise ValueError("llm_threads must be at least 1")
        _ = self.vision  # checks the model choices and the device (ValueError names the bad one)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AgentContext:
        """Settings from the ``MEDLOOP_*`` environment variables, then ``overrides``.

        The one place that reads them (the CLI, the app and the LangGraph server's default
        graph call it); nothing else in medloop reads the environment for a setting:
        ``MEDLOOP_LLM``, ``MEDLOOP_HOME``, ``MEDLOOP_DEVICE``, ``MEDLOOP_SEGMENTER``,
        ``MEDLOOP_DETECTOR``, ``MEDLOOP_CLASSIFIER``, ``MEDLOOP_LIBRARY``,
        ``MEDLOOP_CALIBRATION``, ``MEDLOOP_LLM_THREADS``, ``MEDLOOP_LLM_TEMPERATURE``,
        ``MEDLOOP_DEID_SECRET``.
        An empty variable counts as unset; a malformed one raises ValueError naming it.
        Every override wins, None included (``checkpoint=None`` means no persistence); a
        front end drops the options its user left unset before passing them.
        """
        env = os.environ if environ is None else environ
        settings: dict[str, Any] = {}
        for var, name in _ENV.items():
            raw = (env.get(var) or "").strip()
            if raw:
                settings[name] = _parse_env(var, name, raw)
        settings.update(overrides)
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown AgentContext setting(s): {', '.join(unknown)}")
        return cls(**settings)

    @property
    def vision(self) -> VisionConfig:
        """The vision model choices as the tools take them."""
        return VisionConfig(segmenter=self.segmenter, detector=self.detector,
                            classifier=self.classifier, device=self.device)

    def site_key(self) -> SiteKey:
        """The key of keyed pseudonymisation.

        ``deid_secret`` when set, else the home's secret file (created on first use).
        """
        from tools.ingest.pseudonym import SECRET_FILE, SiteKey

        if self.deid_secret:
            return SiteKey.from_text(self.deid_secret)
        return SiteKey.load_or_create(self.home_dir / SECRET_FILE)

    @property
    def library_path(self) -> Path | None:
        """The configured case library folder, or None for the demo library."""
        return Path(self.library).expanduser() if self.library else None

    @property
    def home_dir(self) -> Path:
        """The resolved data folder."""
        return Path(self.home) if self.home is not None else tools.store.default_home()

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


# MEDLOOP_* variable -> AgentContext field, read only by ``AgentContext.from_env``.
_ENV = {
    "MEDLOOP_LLM": "llm",
    "MEDLOOP_HOME": "home",
    "MEDLOOP_DEVICE": "device",
    "MEDLOOP_SEGMENTER": "segmenter",
    "MEDLOOP_DETECTOR": "detector",
    "MEDLOOP_CLASSIFIER": "classifier",
    "MEDLOOP_LIBRARY": "library",
    "MEDLOOP_CALIBRATION": "calibration",
    "MEDLOOP_LLM_THREADS": "llm_threads",
    "MEDLOOP_LLM_TEMPERATURE": "llm_temperature",
    "MEDLOOP_DEID_SECRET": "deid_secret",
}


def _parse_env(var: str, name: str, raw: str) -> Any:
    """The typed value of one variable; ValueError names the variable and what it expects."""
    if name == "llm_threads":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{var} must be a whole number of threads, got {raw!r}") from None
    if name == "llm_temperature":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{var} must be a number from 0 to 2, got {raw!r}") from None
    return raw
