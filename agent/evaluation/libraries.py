"""Case libraries cross-fitted by image: the agent scored on images its library never held.

When the suite being evaluated is itself a set of labelled cases (VQA-RAD's JSON-lines
format), the case library, its trained heads and its answer model would otherwise have learnt
the very answers being scored. ``fold_libraries`` splits the suite's items into ``k`` folds by
image (``agent.evaluation.folds.folds_by_image``, the split the majority baseline uses), and
builds for each fold a library of the *other* folds' images and pairs, with heads and answer
model trained on those alone. Every image is embedded once, into a library of the whole suite,
and the fold libraries reuse those vectors.

Libraries live under ``ROOT/<suite name>-<digest>/`` (``fold-K`` and ``all``); the digest is of
the items file and the fold settings, so an edited file or another split builds anew, and a
rerun with the same ones reuses what was built.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from agent.evaluation.folds import folds_by_image
from agent.evaluation.items import EvalItem
from retrievers import reliability
from retrievers.embedders import image_embedder_by_name
from retrievers.question_kinds import table_is_current
from retrievers.vqa_library import (
    DEFAULT_IMAGE_EMBEDDER,
    build_vqa_library,
    library_image_vectors,
    open_case_library,
)

__all__ = ["every_image_vectors", "fold_libraries"]

_DONE = "fold.done"
_ALL = "all"
"""The library of every image, beside the fold libraries; their image vectors come from it."""


def _relative(image: str, base: Path) -> str:
    try:
        return Path(image).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return image


def _build(items_file: Path, root: Path, images: Sequence[str] | None,
           vectors: dict[str, np.ndarray] | None, embedder_name: str) -> None:
    """One library with its heads and answer model, marked done only when complete."""
    if (root / _DONE).exists():
        if not table_is_current(root):  # built before the table (or these kinds) existed
            lib = open_case_library(root)
            try:
                reliability.train_and_save(lib)
            finally:
                lib.close()
        return
    shutil.rmtree(root, ignore_errors=True)
    embedder = image_embedder_by_name(embedder_name)
    lib = build_vqa_library(items_file, root, embedder, images=images, image_vectors=vectors)
    try:
        reliability.train_library(lib)
    finally:
        lib.close()
    (root / _DONE).write_text("ok\n")


def fold_libraries(items_file: str | Path, items: Sequence[EvalItem], folds: int, seed: int,
                   root: str | Path, progress: Callable[[str], None] | None = None,
                   image_embedder: str = DEFAULT_IMAGE_EMBEDDER) -> dict[str, Path]:
    """Item id -> the library to answer it with (built from the other folds' images).

    ``items`` are the suite's items as read from ``items_file`` (a JSON-lines labelled set);
    all of them are split, so the libraries do not depend on which items a run scores.
    ``image_embedder`` names the libraries' image embedder (the default one's; tests pass a
    cheap one).
    """
    items_file = Path(items_file)
    key = f"{folds}:{seed}:{image_embedder}".encode()
    digest = hashlib.sha256(items_file.read_bytes() + key).hexdigest()
    home = Path(root) / f"{items_file.parent.name}-{digest[:12]}"
    say = progress or (lambda _msg: None)
    say(f"library of every image in {home / _ALL}")
    _build(items_file, home / _ALL, None, None, image_embedder)
    vectors = _image_vectors(home / _ALL)
    out: dict[str, Path] = {}
    for fold in folds_by_image(items, folds, seed):
        fit_images = sorted({_relative(im, items_file.parent)
                             for i in fold.fit for im in items[i].images
                             if isinstance(im, str)})
        path = home / f"fold-{fold.index}"
        say(f"fold {fold.index}: library of {len(fit_images)} images in {path}")
        _build(items_file, path, fit_images, vectors, image_embedder)
        out.update({items[i].id: path for i in fold.scored})
    return out


def every_image_vectors(library_of: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """Image -> vector of every image of the suite ``fold_libraries`` returned ``library_of`` for.

    Read from the library of every image that sits beside the fold libraries (what the
    folds were built from), so nothing is embedded again.
    """
    return _image_vectors(next(iter(library_of.values())).parent / _ALL)


def _image_vectors(root: Path) -> dict[str, np.ndarray]:
    every = open_case_library(root)
    try:
        return library_image_vectors(every)
    finally:
        every.close()
