"""Which adapter serves a job under a configuration: the segmenter and the detector.

Kept apart from ``tools.models.registry`` (which describes and caches models and is imported by
every adapter) so that no adapter module and the registry import each other. Nothing loads here:
the weights load on the first prompt or call.
"""

from __future__ import annotations

from typing import Any

from tools.models.hf import HfDetector, HfSamSegmenter
from tools.models.medsam import Segmenter, get_predictor
from tools.spec import VisionConfig

__all__ = ["detector_for", "segmenter_for"]


def segmenter_for(config: VisionConfig) -> Segmenter:
    """The segmenter ``config`` names: the shared LiteMedSAM predictor, or a SAM checkpoint.

    Nothing loads here; the weights load on the first prompt.
    """
    if config.segmenter.startswith("hf:"):
        return HfSamSegmenter(config.segmenter[3:], config.device)
    return get_predictor(None if config.device == "auto" else config.device)


def detector_for(config: VisionConfig) -> Any:
    """The open-vocabulary detector ``config`` names (an ``HfDetector``), or None (lungs only).

    Nothing loads here; the weights load on the first call.
    """
    if not config.detector.startswith("hf:"):
        return None
    return HfDetector(config.detector[3:], config.device)
