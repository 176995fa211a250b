"""Whether an image is like the images a case library holds: the check its experts make first.

A library answers from its own cases. On an image unlike all of them (a page of text, a
texture, a 64-pixel test file) its nearest cases are merely the least unlike, and its trained
heads and answer model extrapolate: asked "Is there a pneumothorax?" about scikit-image's scanned
page of text, ``case_answer`` said "no" (P(yes) = 0.28) as it would about a chest film, and
nothing in its evidence said the image was outside what the library knows.

The measure is the cosine of the image's embedding to the nearest library image, on the raw
embeddings: centred (as the neighbours are ranked, ``case_answers.CENTRED``), unrelated pictures
scored as close as real held-out images do. The library sets its own floor from its images:
each one's cosine to its nearest *other* image (leave one out). An image below the lowest of
those, by more than ``MARGIN`` of the spread between that lowest and the median, is less like
the library than its most isolated member is, and the tool flags its evidence
(``tools.domain.flag_evidence``; ``case_answer``, the trained-heads ``classify`` and
``similar_cases``; ``case_answer`` also withholds its answer): the score drops, and the agent
does not answer from it.

Measured (``bench/library_domain.py``): none of the 111 VQA-RAD dev images is flagged by the
fold library that never saw it (the closest call 0.9794 against a floor of 0.9792; at a margin
of 0.1 that image was flagged), pydicom's real MR and chest radiograph are inside (0.987-0.989),
and 8 of the 19 grey pictures that scikit-image and pydicom ship are flagged (text, textures,
a clock, a grey retinal image, pydicom's 64-pixel MR; colour pictures and DICOMs of other
modalities are refused before this, by the shipped domain). The moon, "camera", "coins", a
horse silhouette, binary blobs, a checkerboard and the Shepp-Logan phantom embed as close
as real images do and are not caught: the encoder (LiteMedSAM, pooled) was not trained to
tell them apart, and a wider net would flag real images.

A library of fewer than ``MIN_IMAGES`` images sets no floor: its spread says nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.embedders import l2_normalise
from retrievers.vqa_library import library_image_vectors
from tools.domain import flag_evidence
from tools.evidence import Evidence

__all__ = ["LIBRARY_IMAGES", "MARGIN", "MIN_IMAGES", "Floor", "Typicality", "flag_if_unlike",
           "floor_of", "library_floor", "library_typicality", "typicality"]

MARGIN = 0.5
"""How far below the library's most isolated image an image must be to be outside, as a
share of the spread between that image's nearest-other cosine and the median one. At 0.1,
one of the 111 dev images was flagged by the fold library that never saw it."""

MIN_IMAGES = 20
"""Libraries with fewer images set no floor."""

LIBRARY_IMAGES = "the kinds of image its case library holds"
"""What a library's experts were fitted on, as a flagged summary names it."""

_CHUNK = 2048


@dataclass(frozen=True)
class Floor:
    """A library's floor: ``cosine``, and what it was set from.

    Its ``images``' nearest-other cosines: the ``lowest`` and the ``median``.
    """

    cosine: float
    lowest: float
    median: float
    images: int
    vectors: np.ndarray
    """The library's unit image vectors ``(N, D)``, what a new image is compared with."""


@dataclass(frozen=True)
class Typicality:
    """An image against a library's floor: its cosine to the ``nearest`` library image."""

    nearest: float
    floor: Floor

    @property
    def inside(self) -> bool:
        """Whether the image is at least as like the library as the floor asks."""
        return self.nearest >= self.floor.cosine

    def note(self) -> str:
        """One line for the evidence: how unlike, against what."""
        return (f"the image is unlike every image of the case library: cosine {self.nearest:.4f} "
                f"to the nearest, below its floor {self.floor.cosine:.4f} (each of its "
                f"{self.floor.images} images has a nearest other at {self.floor.lowest:.4f} or "
                f"more, median {self.floor.median:.4f}), so its cases and models say nothing "
                "about this image")


def floor_of(vectors: np.ndarray, margin: float = MARGIN) -> Floor | None:
    """The floor of a library whose image vectors are the rows of ``vectors``.

    None when it has fewer than ``MIN_IMAGES`` images.
    """
    x = l2_normalise(np.asarray(vectors, np.float32))
    n = len(x)
    if n < MIN_IMAGES:
        return None
    nearest = np.empty(n, np.float32)
    for start in range(0, n, _CHUNK):
        sims = x[start:start + _CHUNK] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        nearest[start:start + _CHUNK] = sims.max(axis=1)
    lowest, median = float(nearest.min()), float(np.median(nearest))
    return Floor(lowest - margin * (median - lowest), lowest, median, n, x)


def typicality(floor: Floor, image_vector: np.ndarray) -> Typicality:
    """How like ``floor``'s library an image is, from its vector in the library's space."""
    q = l2_normalise(np.asarray(image_vector, np.float32).reshape(1, -1))[0]
    return Typicality(float((floor.vectors @ q).max()), floor)


_FLOORS: dict[Path, tuple[float, Floor | None]] = {}
_LOCK = threading.Lock()


def library_floor(library: Any) -> Floor | None:
    """The floor of a ``CaseLibrary`` (set once per process, again when its vectors change)."""
    root = Path(library.root)
    vec_file = root / "image.vec"
    stamp = vec_file.stat().st_mtime if vec_file.exists() else -1.0
    with _LOCK:
        hit = _FLOORS.get(root)
        if hit is None or hit[0] != stamp:
            vectors = list(library_image_vectors(library).values())
            hit = (stamp, floor_of(np.stack(vectors)) if vectors else None)
            _FLOORS[root] = hit
        return hit[1]


def library_typicality(library: Any, image_vector: np.ndarray) -> Typicality | None:
    """How like a ``CaseLibrary``'s images an image is; None when the library sets no floor."""
    floor = library_floor(library)
    return typicality(floor, image_vector) if floor is not None else None


def flag_if_unlike(ev: Evidence, typ: Typicality | None, validated_on: str,
                   flag: bool = True) -> Evidence:
    """``ev`` flagged as outside its tool's domain when ``typ`` says the image is unlike.

    The typicality goes into ``ev.data["typicality"]`` either way (when the library sets a
    floor), so a reader sees how close the call was. ``flag=False`` records it only: for an
    answer the library did not make (what a DICOM header says).
    """
    if typ is None:
        return ev
    ev = ev.model_copy(update={"data": {**ev.data, "typicality": {
        "nearest": round(typ.nearest, 4), "floor": round(typ.floor.cosine, 4),
        "inside": typ.inside}}})
    return ev if typ.inside or not flag else flag_evidence(ev, typ.note(), validated_on)
