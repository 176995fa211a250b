"""What every model adapter shares: loading lazily once per process, and caching embeddings.

``LazyModel`` is the base of the configurable adapters (transformers SAM, detectors and
classifiers, open_clip): a model named by ``ref`` on a resolved ``device``, loaded on the first
call through the registry's process-wide ``load_once`` under ``KIND:REF:DEVICE``, never at
construction (smolagents' ``Tool.setup``). ``EmbeddingCache`` is the one least-recently-used
cache of image-encoder outputs that the segmenters keep per image, so further prompts on one
image only run the prompt encoder and the mask decoder.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from tools.models.registry import is_loaded, load_once, resolve_device

__all__ = ["EmbeddingCache", "LazyModel", "content_key"]

T = TypeVar("T")


def content_key(display: np.ndarray) -> str:
    """A cache key from the pixels, for callers that have no image id."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(str(display.shape).encode())
    h.update(np.ascontiguousarray(display).tobytes())
    return "px-" + h.hexdigest()


class LazyModel(Generic[T]):
    """A model named by ``ref`` on ``device``; ``model()`` loads it once per process.

    Subclasses set ``kind`` (the registry key's prefix, e.g. ``hf-sam``) and implement
    ``_load()``; two adapters for the same model and device share one loaded copy.
    """

    kind: ClassVar[str] = "model"

    def __init__(self, ref: str, device: str = "auto") -> None:
        self.ref = ref
        self.device = resolve_device(device)

    @property
    def key(self) -> str:
        """The registry key this model is cached under: ``KIND:REF:DEVICE``."""
        return f"{self.kind}:{self.ref}:{self.device}"

    @property
    def loaded(self) -> bool:
        """Whether this process has loaded the model already."""
        return is_loaded(self.key)

    def model(self) -> T:
        """The loaded model (whatever ``_load`` returns), loading it on the first call."""
        return load_once(self.key, self._load)

    def _load(self) -> T:
        raise NotImplementedError


class EmbeddingCache(Generic[T]):
    """Image-encoder outputs by image id, least recently used first out; thread-safe.

    A hit must also match the image's ``(H, W)``: an id reused for other pixels (a test, a
    re-windowed copy) is encoded again rather than segmented with a stale embedding.
    ``computed`` counts encoder runs (what the benchmarks and tests compare).
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple[int, int], T]] = OrderedDict()
        self._lock = threading.RLock()
        self.computed = 0

    def get(self, image_id: str | None, display: np.ndarray, compute: Callable[[], T]) -> T:
        """The cached value for this image, or ``compute()``'s, stored under its id."""
        key = image_id or content_key(display)
        shape = (int(display.shape[0]), int(display.shape[1]))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == shape:
                self._entries.move_to_end(key)
                return hit[1]
            value = compute()
            self.computed += 1
            self._entries[key] = (shape, value)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return value

    def clear(self) -> None:
        """Forget every cached value."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, image_id: Any) -> bool:
        with self._lock:
            return image_id in self._entries
