"""k-fold splits grouped by image: no image's questions both in what is learnt and what is scored.

VQA-RAD asks about 9 questions per image, often the same question reworded ("Is there a
pneumothorax?", "Is/Are there a pneumothorax?"). Split by *item*, a component that learns from
labelled cases (a case library, a majority answer, a calibration map) would find the scored
question's twin, with its answer, in what it learnt from, and score far above what it does on
new images. ``folds_by_image`` splits by image instead: items that share an image (or share an
image with an item that shares one, transitively) always fall in the same fold.

Items are anything with images: an ``EvalItem`` (paths or in-memory images), a run ``Record``
(its ``item_images``), or a dict with an ``"images"`` list. An item without images is a group
of its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Fold", "folds_by_image", "image_groups", "image_keys", "shuffled_by_image"]


@dataclass(frozen=True)
class Fold:
    """One fold: the indices (into the items given) to learn from and to score.

    ``fit`` and ``scored`` share no image; every item is scored in exactly one fold.
    """

    index: int
    fit: list[int]
    scored: list[int]


def image_keys(item: Any) -> list[str]:
    """The keys of the images an item is about: file paths as given, or pixel content ids.

    In-memory images (the phantoms) are keyed by ``LoadedImage.content_id()``, so the same
    pixels are the same image however they were made.
    """
    if isinstance(item, dict):
        images = item.get("images") or []
    elif hasattr(item, "item_images"):
        images = item.item_images or []
    else:
        images = getattr(item, "images", None) or []
    return [im if isinstance(im, str) else im.content_id() for im in images]


def image_groups(
    items: Sequence[Any], *, keys: Callable[[Any], list[str]] = image_keys
) -> list[list[int]]:
    """Indices of ``items`` joined by shared images (transitively), in order of first item."""
    return _groups([keys(it) for it in items])


def _groups(keys: Sequence[list[str]]) -> list[list[int]]:
    """Items joined by shared images (union-find), each group's item indices in input order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if k in first:
                parent[root(i)] = root(first[k])
            else:
                first[k] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def folds_by_image(
    items: Sequence[Any],
    k: int = 5,
    seed: int = 0,
    *,
    keys: Callable[[Any], list[str]] = image_keys,
) -> list[Fold]:
    """``k`` folds of ``items`` grouped by image (see the module docstring).

    Groups are shuffled with ``seed``, then placed largest first into the fold with the fewest
    items so far, so folds are near equal in size and the same inputs always give the same
    folds. With fewer groups than ``k`` the empty folds are dropped. Raises ValueError for
    ``k < 2``.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    groups = image_groups(items, keys=keys)
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    scored: list[list[int]] = [[] for _ in range(k)]
    for g in groups:
        min(scored, key=len).extend(g)
    everything = set(range(len(items)))
    folds = [sorted(s) for s in scored if s]
    return [Fold(i, sorted(everything - set(s)), s) for i, s in enumerate(folds)]


def shuffled_by_image(items: Sequence[Any], seed: int = 0) -> list[Any]:
    """``items`` with their image groups in a seeded random order, each group's items together.

    A run cut short (or ``--limit`` N) is then a random sample of images with all their
    questions, rather than the file's first images; the order within a group is kept, so an
    image's embedding is computed once and served from the cache for its other questions.
    """
    groups = image_groups(items)
    random.Random(seed).shuffle(groups)
    return [items[i] for g in groups for i in g]
