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
    from tools.pacs.config import PacsConfig


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
        gpu_mem: the GPU memory the tools' models may take together, e.g. ``"20GB"``
            (``MEDLOOP_GPU_MEM``); loading past it first unloads the least recently used
            models (``tools.models.budget``). None: no limit.
        anatomy: None or ``xrv-pspnet`` (``MEDLOOP_ANATOMY``): TorchXRayVision's chest anatomy
            segmenter, offered as ``segment_anatomy`` and used by ``measure_lungs`` for the
            heart. ``classifier`` may also be ``xrv:WEIGHTS`` (a TorchXRayVision chest X-ray
            findings classifier, e.g. ``xrv:densenet121-res224-all``).
        segmenter: ``lite-medsam`` (packaged) or ``hf:ID_OR_PATH`` (transformers SAM / SAM 2).
        detector: ``lungs-finder`` (packaged) or ``hf:ID_OR_PATH`` (OWLv2 / Grounding DINO).
        classifier: None (the case library's kNN), ``open_clip:REF`` (zero-shot) or
            ``hf:ID_OR_PATH`` (a supervised transformers image classifier).
        vlm: None, ``hf:ID_OR_PATH`` (a local transformers image-text-to-text model) or
            ``openai:MODEL@URL`` (an OpenAI-compatible vision endpoint): the model behind
            ``ask_image`` and ``draft_report``, offered only when it is set.
        vlm_api_key: the bearer token for that endpoint (``MEDLOOP_VLM_API_KEY``), if any.
        profile: the profile ``from_env`` laid under the other settings (a name or a TOML path,
            ``agent.profiles``); its values are already in the fields above, so setting it on a
            context built directly changes nothing: pass it to ``from_env``.
        library: a case library folder (``medloop index build``) for the retrieval tools;
            None uses the demo library, built in the background on first use.
        answers_library: the library of labelled question-answer cases ``case_answer``
            answers from when ``library`` holds none (``MEDLOOP_ANSWERS_LIBRARY``): None uses
            the one medloop ships (VQA-RAD's development pairs, CC0;
            ``retrievers.shipped_library``), ``none`` turns it off, anything else is a folder
            ``medloop index build`` made from labelled pairs.
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
        consult_experts: before the planner's first call of a turn, ask the always-offered
            experts that take the user's question (``case_answer``) on the turn's images,
            without a planner call (``agent.nodes.think.consult_calls``), so the planner starts
            from what they said. False leaves the first call to the planner.
        route_tools: offer the planner at most this many tools each round, the ones whose
            descriptions best match the question (``agent.planner.route``; a runner-up only when it
            scores close to the best); 0 offers every tool. None (the default) routes to 2 for
            planners that declare ``prefers_tool_routing`` (the packaged embedded ones) and
            offers every tool to others.
        answer_samples: once an answer is accepted, ask the planner this many more times
            at ``sample_temperature`` and pool the share that agrees into the confidence
            (self-consistency, ``agent.trust.consistency``); 0 (the default) does not sample.
        sample_temperature: the temperature of those extra answers (above 0, at most 2).
        pacs_url: the PACS ``medloop ask --study`` and the app's study picker fetch from:
            ``http(s)://host/dicom-web`` (DICOMweb) or ``dicom://AET@host:port`` (DIMSE);
            None: no PACS (``tools.pacs``).
        pacs_user, pacs_password, pacs_token: its credentials (never in the URL).
        pacs_config: a TOML file of PACS settings (``tools.pacs.config``: URL, credentials,
            TLS, time limits, study size limits), under the fields above.
        pacs_ca: a PEM bundle of the certificate authorities to trust for an https PACS.
        mcp_servers: MCP servers whose tools the planner may call besides medloop's own
            (``agent.mcp``): the path of a JSON file in the Claude Desktop ``mcpServers``
            format, that JSON text itself, or the mapping; None: none.
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
    consult_experts: bool = True
    answer_samples: int = 0
    sample_temperature: float = 0.7
    segmenter: str = "lite-medsam"
    detector: str = "lungs-finder"
    classifier: str | None = None
    anatomy: str | None = None
    gpu_mem: str | None = None
    vlm: str | None = None
    profile: str | None = None
    library: str | Path | None = None
    answers_library: str | Path | None = None
    calibration: str | Path | None = None
    llm_threads: int | None = None
    llm_temperature: float = 0.0
    raise_tool_errors: bool = False
    deid_secret: str | None = field(default=None, repr=False)
    vlm_api_key: str | None = field(default=None, repr=False)
    pacs_url: str | None = None
    pacs_user: str | None = None
    pacs_password: str | None = field(default=None, repr=False)
    pacs_token: str | None = field(default=None, repr=False)
    pacs_config: str | Path | None = None
    pacs_ca: str | Path | None = None
    mcp_servers: str | Path | Mapping[str, Any] | None = None
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
        _ = self.gpu_mem_mb  # a malformed size raises ValueError naming it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AgentContext:
        """Settings from the ``MEDLOOP_*`` environment variables, then ``overrides``.

        The one place that reads them (the CLI, the app and the LangGraph server's default
        graph call it); nothing else in medloop reads the environment for a setting:
        ``MEDLOOP_LLM``, ``MEDLOOP_HOME``, ``MEDLOOP_DEVICE``, ``MEDLOOP_SEGMENTER``,
        ``MEDLOOP_DETECTOR``, ``MEDLOOP_CLASSIFIER``, ``MEDLOOP_LIBRARY``,
        ``MEDLOOP_ANSWERS_LIBRARY``, ``MEDLOOP_CALIBRATION``, ``MEDLOOP_LLM_THREADS``,
        ``MEDLOOP_LLM_TEMPERATURE``,
        ``MEDLOOP_DEID_SECRET``, ``MEDLOOP_VLM``, ``MEDLOOP_VLM_API_KEY``, ``MEDLOOP_PROFILE``,
        ``MEDLOOP_PACS_URL``, ``MEDLOOP_PACS_USER``, ``MEDLOOP_PACS_PASSWORD``,
        ``MEDLOOP_PACS_TOKEN``, ``MEDLOOP_PACS_CONFIG``, ``MEDLOOP_PACS_CA``,
        ``MEDLOOP_MCP_SERVERS``, ``MEDLOOP_ANATOMY``, ``MEDLOOP_GPU_MEM``.
        A profile (``MEDLOOP_PROFILE`` or ``profile=``: ``agent.profiles``) gives defaults
        under them: a variable or an override that is set wins over the profile's value.
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
        if settings.get("profile"):
            settings = {**_profile_settings(str(settings["profile"]), settings.get("home")),
                        **settings}
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown AgentContext setting(s): {', '.join(unknown)}")
        return cls(**settings)

    @property
    def vision(self) -> VisionConfig:
        """The vision model choices as the tools take them."""
        return VisionConfig(segmenter=self.segmenter, detector=self.detector,
                            classifier=self.classifier, device=self.device,
                            vlm=self.vlm, vlm_api_key=self.vlm_api_key,
                            anatomy=self.anatomy)

    @property
    def gpu_mem_mb(self) -> float | None:
        """``gpu_mem`` in MB (10^6 bytes), or None for no limit."""
        if self.gpu_mem is None:
            return None
        from tools.models.budget import parse_memory

        try:
            return parse_memory(self.gpu_mem)
        except ValueError as exc:
            raise ValueError(f"gpu_mem (MEDLOOP_GPU_MEM / --gpu-mem): {exc}") from None

    def pacs(self, url: str | None = None) -> PacsConfig | None:
        """The PACS settings (``url`` over ``pacs_url``), or None when no PACS is configured.

        Raises:
            ValueError: a malformed PACS setting or config file, naming it.
        """
        from tools.pacs.config import load_pacs_config

        return load_pacs_config(
            self.pacs_config, url=url or self.pacs_url, user=self.pacs_user,
            password=self.pacs_password, token=self.pacs_token,
            ca_bundle=str(self.pacs_ca) if self.pacs_ca else None)

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
    def answers_library_path(self) -> Path | None:
        """The labelled library ``case_answer`` falls back on, or None for none.

        None also when ``library`` holds question-answer pairs itself: it answers then.
        """
        from retrievers.shipped_library import shipped
        from retrievers.vqa_library import QA_FILE

        own = self.library_path
        if own is not None and (own / QA_FILE).exists():
            return None
        ref = str(self.answers_library or "").strip()
        if ref.lower() in ("none", "off"):
            return None
        return Path(ref).expanduser() if ref else shipped()

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
        """LangGraph steps allowed per turn: ingest, the experts asked first, the rounds, answer.

        Up to three nodes a round; asking the experts first takes a think and an act. The round
        budget ends the loop first; this limit is the backstop that guarantees it.
        """
        return 3 * self.max_rounds + 10


# MEDLOOP_* variable -> AgentContext field, read only by ``AgentContext.from_env``.
_ENV = {
    "MEDLOOP_LLM": "llm",
    "MEDLOOP_HOME": "home",
    "MEDLOOP_DEVICE": "device",
    "MEDLOOP_SEGMENTER": "segmenter",
    "MEDLOOP_DETECTOR": "detector",
    "MEDLOOP_CLASSIFIER": "classifier",
    "MEDLOOP_LIBRARY": "library",
    "MEDLOOP_ANSWERS_LIBRARY": "answers_library",
    "MEDLOOP_CALIBRATION": "calibration",
    "MEDLOOP_LLM_THREADS": "llm_threads",
    "MEDLOOP_LLM_TEMPERATURE": "llm_temperature",
    "MEDLOOP_DEID_SECRET": "deid_secret",
    "MEDLOOP_ANATOMY": "anatomy",
    "MEDLOOP_GPU_MEM": "gpu_mem",
    "MEDLOOP_VLM": "vlm",
    "MEDLOOP_VLM_API_KEY": "vlm_api_key",
    "MEDLOOP_PROFILE": "profile",
    "MEDLOOP_PACS_URL": "pacs_url",
    "MEDLOOP_PACS_USER": "pacs_user",
    "MEDLOOP_PACS_PASSWORD": "pacs_password",
    "MEDLOOP_PACS_TOKEN": "pacs_token",
    "MEDLOOP_PACS_CONFIG": "pacs_config",
    "MEDLOOP_PACS_CA": "pacs_ca",
    "MEDLOOP_MCP_SERVERS": "mcp_servers",
}


def _profile_settings(ref: str, home: Any) -> dict[str, Any]:
    """The settings profile ``ref`` gives (its user profiles looked up under ``home``)."""
    from agent.profiles import load_profile

    folder = Path(home).expanduser() if home else tools.store.default_home()
    return dict(load_profile(ref, folder).settings)


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
