"""The model registry: which model does which job, and loading each lazily, once per process.

Where its weights come from, its licence and size, and the device: the GPU when there is one.

Which model serves each job is a ``VisionConfig``, built from ``AgentContext`` (whose
``from_env`` reads the ``MEDLOOP_*`` variables below; nothing here reads the environment). Its
defaults are the models whose weights ship inside installed packages (they run offline on a
CPU); stronger models are chosen by setting:

* ``MEDLOOP_SEGMENTER`` = ``lite-medsam`` (default) or ``hf:ID_OR_PATH`` — a SAM-family
  checkpoint in transformers format (``SamModel``, e.g. MedSAM ``wanglab/medsam-vit-base``, or
  ``Sam2Model``);
* ``MEDLOOP_DETECTOR`` = ``lungs-finder`` (default) or ``hf:ID_OR_PATH`` — an open-vocabulary
  detector in transformers format (OWLv2 or Grounding DINO, told apart by its config);
* ``MEDLOOP_CLASSIFIER`` = unset (default: the case library's nearest-neighbour classifier),
  ``open_clip:hf-hub:ORG/NAME`` / ``open_clip:local-dir:PATH`` / ``open_clip:PATH`` — an
  open_clip image-text model such as BiomedCLIP (zero-shot), or ``hf:ID_OR_PATH`` — a
  supervised transformers image classifier;
* ``MEDLOOP_CLASSIFIER`` = ``xrv:WEIGHTS`` — a TorchXRayVision chest X-ray classifier
  (``xrv:densenet121-res224-all``, ``xrv:resnet50-res512-all``...; ``tools.models.xrv``);
* ``MEDLOOP_ANATOMY`` = ``xrv-pspnet`` — TorchXRayVision's chest anatomy segmenter;
* ``MEDLOOP_DEVICE`` = ``auto`` (default: CUDA when available), ``cpu`` or ``cuda``;
* ``MEDLOOP_GPU_MEM`` = e.g. ``20GB`` — the GPU memory budget (``tools.models.budget``): when
  loading a model would pass it, the least recently used models are dropped first.

Each model is declared once as a ``ModelNeed`` (the packaged ones in ``tools.packaged``, a
configured one by ``configured_segmenter`` / ``_detector`` / ``_classifier``), and each tool's
``ToolSpec`` names the models it runs. ``load_once(key, loader, memory_mb=)`` is the
process-wide cache every loader goes through, kept within the memory budget
(``set_memory_budget``; ``loaded_models()`` lists what is loaded where, least recently used
first); ``describe_models(needs)`` describes models (licence, size on disk, device, offline
availability, loaded or not) without loading any; ``models()`` does that for every packaged and
configured model; ``medloop models`` prints it.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from tools.errors import ToolFailure
from tools.models.budget import MemoryBudget, device_of
from tools.models.xrv_catalog import PSPNET, anatomy_need, classifier_need
from tools.packaged import LITE_MEDSAM, LUNGS_FINDER, MINILM, PACKAGED, RAPIDOCR, SMOLLM2
from tools.spec import ModelNeed, VisionConfig

__all__ = [
    "LITE_MEDSAM",
    "LUNGS_FINDER",
    "MINILM",
    "PACKAGED",
    "RAPIDOCR",
    "SMOLLM2",
    "ModelInfo",
    "ModelNeed",
    "VisionConfig",
    "configured_anatomy",
    "configured_classifier",
    "configured_detector",
    "configured_segmenter",
    "describe_models",
    "is_loaded",
    "load_once",
    "loaded_models",
    "memory_budget",
    "models",
    "open_clip_ref",
    "resolve_device",
    "segmenter_need",
    "set_memory_budget",
    "unload",
]

T = TypeVar("T")

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}
_BUDGET = MemoryBudget()  # no limit until ``set_memory_budget``


def resolve_device(device: str = "auto") -> str:
    """``cuda`` or ``cpu``: ``auto`` picks CUDA when torch sees a GPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ToolFailure("the device is set to cuda (MEDLOOP_DEVICE / --device) but torch "
                          "sees no CUDA device; use auto or cpu")
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_once(key: str, loader: Callable[[], T], *, memory_mb: float | None = None,
              device: str | None = None) -> T:
    """``loader()``'s result, computed on the first call for ``key`` and cached per process.

    One lock per key: two threads asking for the same model wait for one load; different models
    load in parallel. A loader that raises leaves nothing cached, so a later call retries.

    Within the memory budget (``set_memory_budget``): ``memory_mb`` is what the model takes
    (its ``ModelNeed.memory_mb``; None: counted as measured on CUDA once loaded) and
    ``device`` where it goes (default: the key's ``:DEVICE`` suffix, else ``cpu``). Before it
    loads, the least recently used models on a budgeted device are dropped until it fits; each
    call, hit or load, makes ``key`` the most recently used.

    Raises:
        ToolFailure: the model alone needs more than the whole budget.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            _BUDGET.touch(key)
            return _CACHE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        dev = device or device_of(key)
        with _CACHE_LOCK:
            if key in _CACHE:
                _BUDGET.touch(key)
                return _CACHE[key]
            freed = _BUDGET.reserve(key, dev, memory_mb)
            _drop(freed)
        if freed:
            _release(dev)
        before = _cuda_allocated_mb(dev)
        try:
            value = loader()
        except BaseException:
            _BUDGET.cancel(key)
            raise
        after = _cuda_allocated_mb(dev)
        measured = None if before is None or after is None else max(0.0, after - before)
        with _CACHE_LOCK:
            _CACHE[key] = value
            victims = _BUDGET.commit(key, measured)
            _drop(victims)
        if victims:
            _release(dev)
        return value


def _drop(keys: Sequence[str]) -> None:
    """Remove ``keys`` from the cache (the caller holds ``_CACHE_LOCK``)."""
    for k in keys:
        _CACHE.pop(k, None)
        _BUDGET.forget(k)


def _cuda_allocated_mb(device: str) -> float | None:
    """CUDA memory held by torch's tensors on ``device``, MB; None off CUDA or without torch."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return float(torch.cuda.memory_allocated(device)) / 1e6


def _release(device: str) -> None:
    """Collect dropped models and hand torch's cached CUDA blocks back to the driver."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return
    gc.collect()
    torch.cuda.empty_cache()


def is_loaded(key: str) -> bool:
    """Whether ``load_once`` has already loaded ``key`` in this process."""
    with _CACHE_LOCK:
        return key in _CACHE


def unload(key: str) -> bool:
    """Drop ``key`` from the cache now (its memory returns once no caller holds it).

    Returns whether it was loaded. A later ``load_once`` loads it again.
    """
    with _CACHE_LOCK:
        held = key in _CACHE
        _drop([key])
    if held:
        _release(device_of(key))
    return held


def set_memory_budget(limit_mb: float | None, devices: Sequence[str] = ("cuda",)) -> None:
    """The process-wide budget: at most ``limit_mb`` MB of models on ``devices`` (None: none).

    Set from ``AgentContext.gpu_mem`` when the tools are built; models already over a lowered
    limit are dropped at once, least recently used first. ``devices`` counts ``cuda`` (all
    GPUs together) by default; tests count ``cpu`` to exercise it without a GPU.
    """
    with _CACHE_LOCK:
        _drop(_BUDGET.set_limit(limit_mb, devices))
    _release("cuda")


def memory_budget() -> dict[str, Any]:
    """The budget now: ``limit_mb`` (None: none), counted ``devices`` and ``used_mb``."""
    return {"limit_mb": _BUDGET.limit_mb, "devices": sorted(_BUDGET.devices),
            "used_mb": round(_BUDGET.used_mb(), 1)}


def loaded_models() -> list[dict[str, Any]]:
    """What this process has loaded, least recently used first, for ``medloop models --json``.

    Each row: ``key`` (e.g. ``xrv:densenet121-res224-all:cuda``), ``device``, ``declared_mb``
    (its ``ModelNeed.memory_mb``), ``measured_mb`` (CUDA's growth while it loaded),
    ``size_mb`` (what the budget counts), ``counted`` (whether its device is budgeted),
    ``loaded_at`` (epoch seconds), ``idle_s`` (since last use), ``uses`` and ``loading``.
    """
    return [r.as_dict(_BUDGET.counts(r.device)) for r in _BUDGET.snapshot()]


@dataclass(frozen=True)
class ModelInfo:
    """One row of the registry. ``size_mb`` is on disk (None when not found locally)."""

    name: str
    task: str
    source: str
    licence: str
    size_mb: float | None
    device: str
    offline: bool
    loaded: bool
    default: bool
    note: str = ""
    memory_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for ``medloop models --json``."""
        return asdict(self)


def _dist_size_mb(dist: str) -> float | None:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    total = 0
    for f in files:
        p = Path(str(f.locate()))
        if p.is_file():
            total += p.stat().st_size
    return round(total / 1e6, 1)


def _dir_size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / 1e6, 1)


def _readme_licence(folder: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter, if the folder has one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    for line in readme.read_text(errors="replace").splitlines()[:40]:
        if line.lower().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None


def _local_snapshot(ref: str) -> Path | None:
    """A local folder for ``ref``: the path itself, or the hub cache's snapshot (no network)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or ref.startswith((".", "~")) or ref.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # any failure means "not in the local cache"
        return None


def open_clip_ref(spec: str) -> str:
    """The open_clip model name for ``open_clip:...``: a bare folder becomes ``local-dir:``."""
    ref = spec.removeprefix("open_clip:")
    if not ref.startswith(("hf-hub:", "local-dir:")) and Path(ref).expanduser().is_dir():
        ref = f"local-dir:{ref}"
    return ref



def configured_segmenter(config: VisionConfig) -> ModelNeed | None:
    """The SAM-family checkpoint ``config.segmenter`` names (``hf:...``), or None."""
    if not config.segmenter.startswith("hf:"):
        return None
    ref = config.segmenter[3:]
    return ModelNeed("hf-segmenter", "segment (box and point prompts)", ref=ref, device="gpu",
                     cache_key=f"hf-sam:{ref}", note="transformers SamModel / Sam2Model")


def configured_detector(config: VisionConfig) -> ModelNeed | None:
    """The open-vocabulary detector ``config.detector`` names (``hf:...``), or None."""
    if not config.detector.startswith("hf:"):
        return None
    ref = config.detector[3:]
    return ModelNeed("hf-detector", "find (open-vocabulary boxes with scores)", ref=ref,
                     device="gpu", cache_key=f"hf-det:{ref}",
                     note="transformers OWLv2 / Grounding DINO")


def configured_classifier(config: VisionConfig) -> ModelNeed | None:
    """The classifier ``config.classifier`` names (``hf:``, ``open_clip:`` or ``xrv:``), or None."""
    if not config.classifier:
        return None
    if config.classifier.startswith("xrv:"):
        return classifier_need(config.classifier[4:])
    if config.classifier.startswith("hf:"):
        ref = config.classifier[3:]
        return ModelNeed("hf-classifier", "classify (supervised)", ref=ref, device="gpu",
                         cache_key=f"hf-cls:{ref}",
                         note="transformers AutoModelForImageClassification")
    ref = open_clip_ref(config.classifier)
    local = ref.removeprefix("local-dir:").removeprefix("hf-hub:")
    return ModelNeed("open-clip-classifier", "classify (zero-shot, image-text)", ref=local,
                     device="gpu", cache_key=f"open_clip:{ref}", note=f"open_clip {ref}")


def configured_anatomy(config: VisionConfig) -> ModelNeed | None:
    """The chest anatomy segmenter ``config.anatomy`` names (``xrv-pspnet``), or None."""
    return anatomy_need() if config.anatomy == PSPNET else None


def segmenter_need(config: VisionConfig) -> ModelNeed:
    """The segmenter ``config`` runs: the configured checkpoint, else packaged LiteMedSAM."""
    return configured_segmenter(config) or LITE_MEDSAM


def _row(need: ModelNeed, gpu: str) -> ModelInfo:
    """``need`` described on this machine: installed or cached, size, loaded, device."""
    device = gpu if need.device == "gpu" else "cpu"
    # Models that follow the device are cached per device (``KEY:DEVICE``).
    key = need.cache_key and (f"{need.cache_key}:{gpu}" if need.device == "gpu"
                              else need.cache_key)
    loaded = bool(key) and is_loaded(str(key))
    if need.distribution is not None:
        installed = need.module is None or importlib.util.find_spec(need.module) is not None
        return ModelInfo(
            name=need.name, task=need.task, source=f"package {need.distribution}",
            licence=need.licence, size_mb=_dist_size_mb(need.distribution), device=device,
            offline=installed, loaded=loaded, default=True,
            note=need.note if installed else f"not installed: pip install {need.distribution}",
            memory_mb=need.memory_mb,
        )
    weights = Path(str(need.ref)).expanduser()
    if weights.is_absolute() and not weights.is_dir():  # one weights file (TorchXRayVision's)
        here = weights.is_file()
        return ModelInfo(
            name=need.name, task=need.task, source=str(weights), licence=need.licence,
            size_mb=round(weights.stat().st_size / 1e6, 1) if here else None, device=device,
            offline=here, loaded=loaded, default=False, memory_mb=need.memory_mb,
            note=need.note if here else f"{need.note}; not downloaded yet")
    folder = _local_snapshot(str(need.ref))
    licence = need.licence or (_readme_licence(folder) if folder else None) or "see the model card"
    return ModelInfo(
        name=need.name, task=need.task, source=str(need.ref), licence=licence,
        size_mb=_dir_size_mb(folder) if folder else None, device=device,
        offline=folder is not None, loaded=loaded, default=False, note=need.note,
        memory_mb=need.memory_mb,
    )


def describe_models(needs: Sequence[ModelNeed], config: VisionConfig | None = None
                    ) -> list[ModelInfo]:
    """One row per distinct model in ``needs`` (first mention wins), loading none.

    Packaged models come first (those of ``PACKAGED`` in its order, then others as given),
    then configured ones as given; ``config`` gives the device ``"gpu"`` models run on.
    """
    gpu = resolve_device((config or VisionConfig()).device)
    distinct: dict[str, ModelNeed] = {}
    for need in needs:
        distinct.setdefault(need.name, need)
    rank = {n.name: i for i, n in enumerate(PACKAGED)}
    packaged = sorted((n for n in distinct.values() if n.distribution is not None),
                      key=lambda n: rank.get(n.name, len(rank)))  # stable: others keep order
    ordered = packaged + [n for n in distinct.values() if n.distribution is None]
    return [_row(n, gpu) for n in ordered]


def models(config: VisionConfig | None = None) -> list[ModelInfo]:
    """Every packaged model and every one ``config`` configures, described without loading any.

    ``agent.planner.toolset.tool_models`` gives the same rows from the tool specs' own
    declarations (plus any tool added since); this is the registry's view without the tools.
    """
    cfg = config or VisionConfig()
    configured = (configured_segmenter(cfg), configured_detector(cfg), configured_classifier(cfg),
                  configured_anatomy(cfg))
    return describe_models([*PACKAGED, *(n for n in configured if n is not None)], cfg)
