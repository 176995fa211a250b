"""TorchXRayVision's published weights, described without importing torchxrayvision.

``medloop models`` describes every configured model without loading it, and importing
torchxrayvision takes seconds (torch, torchvision, scikit-image), so what the registry needs to
know about each weight set is kept here: the file torchxrayvision downloads it to, its
architecture, input resolution, what it was trained on and the memory it takes.
``tests/tools/models/test_xrv.py`` checks every entry against the installed torchxrayvision
(its ``model_urls``, its cache folder, PSPNet's URL), so a version bump that changes them fails
a test rather than a user's load.

Weights live where torchxrayvision itself looks: ``~/.torchxrayvision/models_data/`` (its
``utils.get_cache_dir()``; ``~`` is ``$HOME``), under the release file's own name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tools.spec import ModelNeed

__all__ = ["PSPNET", "RELEASES", "WEIGHTS", "XrvWeights", "anatomy_need", "classifier_need",
           "default_cache_dir"]

RELEASES = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
"""Where torchxrayvision's release assets (every weight file) are downloaded from."""

PSPNET = "xrv-pspnet"
"""The anatomy setting (``VisionConfig.anatomy``) naming ChestX-Det's PSPNet."""

_DATA_TERMS = ("torchxrayvision code and weights Apache-2.0; the training datasets have their "
               "own (research-use) terms")


@dataclass(frozen=True)
class XrvWeights:
    """One published weight set.

    Attributes:
        name: its torchxrayvision name (``densenet121-res224-all``) or ``xrv-pspnet``.
        filename: the release asset it downloads to (the basename of its URL).
        arch: ``densenet121``, ``resnet50`` or ``pspnet``.
        resolution: the square input side it was trained at (pixels).
        trained_on: the datasets, in words.
        memory_mb: approximate memory once loaded: weights plus one image's inference (and,
            for the classifiers, a heat map's backward pass). From the resident-memory growth
            bench/xrv_experts.py measured on the CPU (DenseNet 141 MB, 376 MB with a heat map;
            ResNet-50 at 512 px 238 MB without one; PSPNet 755 MB), rounded up: what the GPU
            budget counts until a GPU run measures CUDA's own figure.
    """

    name: str
    filename: str
    arch: Literal["densenet121", "resnet50", "pspnet"]
    resolution: int
    trained_on: str
    memory_mb: float

    @property
    def url(self) -> str:
        """The download URL torchxrayvision uses."""
        return RELEASES + self.filename

    def path(self, cache_dir: str | Path | None = None) -> Path:
        """Where torchxrayvision looks for (and downloads) this file."""
        folder = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        return folder / self.filename


def default_cache_dir() -> Path:
    """torchxrayvision's weights folder: ``~/.torchxrayvision/models_data`` under ``$HOME``."""
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def _densenet(tag: str, filename: str, trained_on: str) -> XrvWeights:
    return XrvWeights(f"densenet121-res224-{tag}", filename, "densenet121", 224, trained_on,
                      memory_mb=400)


_D121 = "-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
WEIGHTS: dict[str, XrvWeights] = {w.name: w for w in (
    _densenet("all", "nih-pc-chex-mimic_ch-google-openi-kaggle" + _D121,
              "NIH ChestX-ray14, PadChest, CheXpert, MIMIC-CXR, Google's NIH labels, OpenI and "
              "RSNA Pneumonia"),
    _densenet("nih", "nih" + _D121, "NIH ChestX-ray14"),
    _densenet("pc", "pc" + _D121, "PadChest"),
    _densenet("chex", "chex" + _D121, "CheXpert"),
    _densenet("rsna", "kaggle" + _D121, "RSNA Pneumonia (Kaggle)"),
    _densenet("mimic_nb", "mimic_nb" + _D121, "MIMIC-CXR (NegBio labels)"),
    _densenet("mimic_ch", "mimic_ch" + _D121, "MIMIC-CXR (CheXpert labels)"),
    XrvWeights("resnet50-res512-all", "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
               "resnet50", 512, "PadChest, NIH ChestX-ray14, RSNA Pneumonia, SIIM Pneumothorax "
               "and VinDr-CXR", memory_mb=600),
    XrvWeights(PSPNET, "pspnet_chestxray_best_model_4.pth", "pspnet", 512,
               "ChestX-Det (NIH ChestX-ray14 films with 14 anatomy masks)", memory_mb=1000),
)}
"""Every weight set by name: the classifiers of ``tools.spec.XRV_CLASSIFIERS`` and the PSPNet."""


def classifier_need(name: str, cache_dir: str | Path | None = None) -> ModelNeed:
    """The ``ModelNeed`` of classifier ``name`` (``xrv:NAME`` without the prefix)."""
    w = WEIGHTS[name]
    return ModelNeed(
        f"xrv-{name}", "classify (chest X-ray findings, 18 labels)", licence=_DATA_TERMS,
        ref=str(w.path(cache_dir)), device="gpu", cache_key=f"xrv:{name}",
        memory_mb=w.memory_mb,
        note=f"TorchXRayVision {w.arch} at {w.resolution} px, trained on {w.trained_on}")


def anatomy_need(cache_dir: str | Path | None = None) -> ModelNeed:
    """The ``ModelNeed`` of the PSPNet chest anatomy segmenter."""
    w = WEIGHTS[PSPNET]
    return ModelNeed(
        PSPNET, "segment_anatomy; measure_lungs (heart mask for the CTR)", licence=_DATA_TERMS,
        ref=str(w.path(cache_dir)), device="gpu", cache_key=f"xrv:{PSPNET}",
        memory_mb=w.memory_mb,
        note=f"TorchXRayVision's ChestX-Det PSPNet, 14 structures at {w.resolution} px, "
             f"trained on {w.trained_on}")
