"""Small real embedders and cases for the case library's mechanics (fast, deterministic,
no weights), shared by the retrievers tests."""

from __future__ import annotations

import re

import cv2
import numpy as np

from retrievers.embedders import Embedder, l2_normalise
from retrievers.library import CaseLibrary, NewCase


class PixelEmbedder(Embedder):
    """The image shrunk to 16x16 grey, centred: crude but real image similarity."""

    name = "test-pixels-16"
    dim = 256
    modalities = frozenset({"image"})

    def __init__(self) -> None:
        self.calls = 0

    def load(self) -> None:
        pass

    def embed_images(self, images):
        self.calls += len(images)
        out = []
        for im in images:
            g = im if im.ndim == 2 else im[..., :3].mean(axis=2)
            v = cv2.resize(g.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA).ravel()
            out.append(v - v.mean())
        return l2_normalise(np.stack(out))


class WordsEmbedder(Embedder):
    """Hashed bag of words: texts sharing words are similar."""

    name = "test-words"
    dim = 128
    modalities = frozenset({"text"})

    def load(self) -> None:
        pass

    def embed_texts(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, sum(map(ord, w)) % self.dim] += 1
        return l2_normalise(out)


def _image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (size, size)).astype(np.uint8), (5, 5), 0)
    return img


def _cases(n: int, start: int = 0) -> list[NewCase]:
    findings = ["effusion", "nodule", "fracture", "normal"]
    return [NewCase(case_id=f"c{i}", display=_image(i), image=f"img{i}.png",
                    report=f"case {i} shows {findings[i % 4]} on the film",
                    labels=[findings[i % 4]], modality="CR" if i % 2 else "CT")
            for i in range(start, start + n)]


def _snapshot(lib: CaseLibrary) -> list:
    out = []
    for i in range(0, 40, 7):
        out.append([(h.case_id, round(h.score, 5)) for h in lib.search_image(_image(i), k=5)])
    out.append([(h.case_id, round(h.score, 5)) for h in lib.search_text("nodule film", k=5)])
    return out


def _write_png(path, img) -> None:
    cv2.imwrite(str(path), img)


def _augment(display: np.ndarray, seed: int) -> np.ndarray:
    """Crop 6 % off two sides, stretch contrast by 1.2, rotate by 4 degrees."""
    rng = np.random.default_rng(seed)
    h, w = display.shape[:2]
    dy, dx = int(0.06 * h), int(0.06 * w)
    oy, ox = rng.integers(0, 2, 2)
    img = display[oy * dy: h - (1 - oy) * dy, ox * dx: w - (1 - ox) * dx]
    img = np.clip((img.astype(np.float32) - 128) * 1.2 + 128, 0, 255).astype(np.uint8)
    hh, ww = img.shape[:2]
    rot = cv2.getRotationMatrix2D((ww / 2, hh / 2), 4.0, 1.0)
    return cv2.warpAffine(img, rot, (ww, hh), borderMode=cv2.BORDER_REFLECT)
