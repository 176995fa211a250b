"""Fixtures for the retrievers tests.

A small library of synthetic cases (fast, real embedders of pixels and words), the demo library
(real images, reports and embedders) built once per session, and the fixture images'
embeddings computed once per session (LiteMedSAM takes seconds an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from retrievers.embedders import Embedder, image_embedder_by_name
from retrievers.library import CaseLibrary
from retrievers.vqa_library import DEFAULT_IMAGE_EMBEDDER
from tests.retrievers.helpers import PixelEmbedder, WordsEmbedder, _cases


class MemoEmbedder(Embedder):
    """The default case-library image embedder, remembering every image it embedded.

    Same name and dimension as the real one (a library built with it opens with the real
    one); only repeated pixels are served from memory.
    """

    modalities = frozenset({"image"})

    def __init__(self) -> None:
        self.inner = image_embedder_by_name(DEFAULT_IMAGE_EMBEDDER)
        self.name, self.dim = self.inner.name, self.inner.dim
        self.memo: dict[bytes, np.ndarray] = {}

    def load(self) -> None:
        """Load the real embedder."""
        self.inner.load()

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Real vectors, each image embedded once per session."""
        keys = [np.ascontiguousarray(im).tobytes() + str(np.shape(im)).encode()
                for im in images]
        todo = [(k, im) for k, im in zip(keys, images, strict=True) if k not in self.memo]
        if todo:
            for (k, _), v in zip(todo, self.inner.embed_images([im for _, im in todo]),
                                 strict=True):
                self.memo[k] = v
        return np.stack([self.memo[k] for k in keys]) if keys else np.zeros((0, self.dim))


@pytest.fixture(scope="session")
def mini_embedder() -> Any:
    """One memoising default image embedder for every test of this folder."""
    return MemoEmbedder()


@pytest.fixture
def lib(tmp_path):
    """A writable library of 40 synthetic cases (pixel and word embedders)."""
    lib = CaseLibrary.create(tmp_path / "lib", PixelEmbedder(), WordsEmbedder())
    lib.add(_cases(40))
    yield lib
    lib.close()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo library (real images, real reports, real embedders), built once."""
    from retrievers.demo import demo_library

    return demo_library(tmp_path_factory.mktemp("demo-home"), max_reports=60)
