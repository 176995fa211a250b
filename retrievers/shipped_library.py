"""The labelled case library medloop ships, so ``case_answer`` answers on real images as installed.

Why: on real radiology images the one offline expert fitted on clinicians' questions is a
library of labelled question-answer cases (``retrievers.case_answers``: the neighbours' answers,
a yes/no answer model, trained heads, and a table of the kinds of question it cannot answer).
Without one configured, the agent had no tool that could answer a real-image question, and the
clinical calibration map, fitted on runs that had such a library, was optimistic for it.

The shipped library holds the 988 question-answer pairs on 111 real CT, MR and X-ray images of
VQA-RAD's development split (``../shared/data/vqa_rad_dev``; VQA-RAD is CC0 1.0): LiteMedSAM
image vectors and 96-pixel thumbnails, MiniLM question vectors, the trained heads, the answer
model and the per-kind reliability table (about 2.5 MB, ``libraries/vqa-rad-dev/``). SQLite
wants a writable folder, so the first use copies it into ``MEDLOOP_HOME/libraries/`` (once per
content digest, atomically) and opens it there.

Its images' fingerprints ship beside it (``images.jsonl``: sha256 and a 256-bit difference
hash), so an evaluation can tell when it is about to score images the library has learnt the
answers of (``overlapping``), also when they were shrunk or re-encoded since, and leave the
library out rather than report memorised answers as accuracy.

Rebuild it (after a change to the library format, the embedder or the answer model)::

    python -m retrievers.shipped_library ../shared/data/vqa_rad_dev/items.jsonl \
        retrievers/libraries/vqa-rad-dev
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTENTS_FILE",
    "IMAGES_FILE",
    "NAME",
    "NEAR_BITS",
    "SOURCE",
    "Fingerprints",
    "answers_getter",
    "build_shipped",
    "difference_hash",
    "file_digest",
    "image_digests",
    "install",
    "overlapping",
    "shipped",
    "write_contents",
]

NAME = "vqa-rad-dev"
"""The shipped library's name (its folder, and the prefix of its installed copy)."""

SOURCE = Path(__file__).resolve().parent / "libraries" / NAME
"""Where the shipped library lies inside the package."""

CONTENTS_FILE = "contents.json"
"""``{file name: sha256}`` of every other file of the library: ``install`` checks the copy
against it. A ``*.sqlite`` ignore rule once kept ``cases.sqlite`` out of the repository, and a
fresh checkout's library failed far from the cause (``KeyError: 0`` inside ``case_answer``)."""

IMAGES_FILE = "images.jsonl"
"""One JSON a line per library image: ``{"image": path, "sha256": hex, "dhash": hex}``."""

NEAR_BITS = 20
"""Difference hashes this close (of 256 bits) are the same picture. Measured on the dev set:
its 12 images shrunk to 256 pixels and re-encoded (the test fixture) differ from their
originals by 1-7 bits; its 6,105 pairs of distinct images by 37 bits at least."""

_LOCK = threading.Lock()
_OPEN: dict[Path, Any] = {}


def shipped() -> Path | None:
    """The shipped library's folder, or None when this install carries none."""
    from retrievers.vqa_library import QA_FILE

    return SOURCE if (SOURCE / QA_FILE).is_file() else None


def file_digest(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@cache
def _content_digest(source: Path) -> str:
    """One digest of every file in ``source`` (names and bytes): the installed copy's key."""
    h = hashlib.sha256()
    for f in sorted(p for p in source.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def install(home: str | Path, source: Path | None = None) -> Path:
    """The shipped library copied under ``home/libraries/`` (once), ready to open.

    The copy is named by the content digest, so a new release's library is copied beside the
    old one, never mixed with it; it is made in a scratch folder and renamed into place, so an
    interrupted copy is never opened.

    Raises:
        FileNotFoundError: this install carries no shipped library, or an incomplete one.
        ValueError: a file of it differs from the digest its ``contents.json`` lists.
    """
    source = source or shipped()
    if source is None:
        raise FileNotFoundError(f"no shipped case library at {SOURCE}")
    dest = Path(home) / "libraries" / f"{source.name}-{_content_digest(source)[:12]}"
    if dest.is_dir():
        return dest
    _check_contents(source)  # once, before the copy: what is copied is what was built
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    shutil.copytree(source, scratch)
    try:
        scratch.rename(dest)
    except OSError:  # another process put it there first: theirs is the same bytes
        shutil.rmtree(scratch, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest


def _check_contents(source: Path) -> None:
    """Raise, naming them, when files ``contents.json`` lists are missing or changed."""
    listed = source / CONTENTS_FILE
    if not listed.is_file():
        raise FileNotFoundError(f"the case library at {source} lists no contents "
                                f"({CONTENTS_FILE} is missing): reinstall medloop")
    contents: dict[str, str] = json.loads(listed.read_text(encoding="utf-8"))
    missing = sorted(n for n in contents if not (source / n).is_file())
    if missing:
        raise FileNotFoundError(f"the case library at {source} is incomplete: "
                                f"{', '.join(missing)} missing; reinstall medloop")
    changed = sorted(n for n, digest in contents.items() if file_digest(source / n) != digest)
    if changed:
        raise ValueError(f"the case library at {source} is damaged: {', '.join(changed)} "
                         f"differ from the digests in {CONTENTS_FILE}; reinstall medloop")


def write_contents(out: str | Path) -> Path:
    """``out/contents.json``: the sha256 of every other file of the library at ``out``."""
    out = Path(out)
    contents = {f.name: file_digest(f) for f in sorted(out.iterdir())
                if f.is_file() and f.name != CONTENTS_FILE}
    path = out / CONTENTS_FILE
    path.write_text(json.dumps(contents, indent=1) + "\n", encoding="utf-8")
    return path


def answers_getter(source: Path, home: str | Path) -> Callable[[], Any]:
    """A callable opening the labelled library at ``source`` on its first call (once a process).

    The shipped library is opened from its installed copy under ``home``; any other folder (a
    site's own, ``MEDLOOP_ANSWERS_LIBRARY``) is opened where it is.
    """

    def get() -> Any:
        from retrievers.vqa_library import open_case_library

        root = install(home, source) if source.resolve() == SOURCE else source
        with _LOCK:
            if root not in _OPEN:
                _OPEN[root] = open_case_library(root)
            return _OPEN[root]

    return get


def difference_hash(path: str | Path) -> int | None:
    """A 256-bit difference hash of the picture (16 x 17 grey), or None if PIL cannot read it.

    Each bit says whether a pixel is brighter than its left neighbour: resizing and JPEG
    re-encoding keep nearly all of them, a different image keeps about half.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L").resize((17, 16), Image.Resampling.LANCZOS),
                              dtype=np.int16)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


@dataclass(frozen=True)
class Fingerprints:
    """A library's images as ``overlapping`` compares them."""

    sha256: frozenset[str]
    dhash: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.sha256)

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is one of these images: the same bytes, or nearly the same picture."""
        if file_digest(path) in self.sha256:
            return True
        h = difference_hash(path)
        return h is not None and any((h ^ k).bit_count() <= NEAR_BITS for k in self.dhash)


@cache
def image_digests(source: Path | None = None) -> Fingerprints:
    """The fingerprints of the images a library was built from (its ``images.jsonl``)."""
    root = source or shipped()
    if root is None or not (root / IMAGES_FILE).is_file():
        return Fingerprints(frozenset(), ())
    rows = [json.loads(x) for x in (root / IMAGES_FILE).read_text(encoding="utf-8").splitlines()
            if x.strip()]
    return Fingerprints(frozenset(r["sha256"] for r in rows),
                        tuple(int(r["dhash"], 16) for r in rows if r.get("dhash")))


def overlapping(paths: Iterable[str | Path], source: Path | None = None) -> list[str]:
    """Those of ``paths`` that are one of the library's images (``Fingerprints.holds``).

    An evaluation scoring such an image with this library would score answers it has learnt.
    Paths that do not exist are skipped (the evaluation reports those itself).
    """
    known = image_digests(source)
    if not len(known):
        return []
    return [p for p in dict.fromkeys(str(p) for p in paths)
            if Path(p).is_file() and known.holds(p)]


def build_shipped(items_file: str | Path, out: str | Path) -> Path:
    """Build the shipped library from a labelled JSON-lines file (the dev set's format).

    The same steps as ``medloop index build`` + ``medloop library train`` (image and question
    vectors, trained heads, the yes/no answer model, the per-kind reliability table), then the
    images' digests. ``out`` is replaced; its ``README.md`` (the provenance) is kept.
    """
    from retrievers import reliability
    from retrievers.embedders import image_embedder_by_name
    from retrievers.vqa_library import DEFAULT_IMAGE_EMBEDDER, build_vqa_library

    items_file, out = Path(items_file), Path(out)
    readme = out / "README.md"
    kept = readme.read_text(encoding="utf-8") if readme.is_file() else None
    shutil.rmtree(out, ignore_errors=True)
    lib = build_vqa_library(items_file, out, image_embedder_by_name(DEFAULT_IMAGE_EMBEDDER))
    try:
        reliability.train_library(lib)
    finally:
        lib.close()
    write_image_digests(items_file, out)
    if kept is not None:
        readme.write_text(kept, encoding="utf-8")
    write_contents(out)
    return out


def write_image_digests(items_file: str | Path, out: str | Path) -> Path:
    """``out/images.jsonl``: the fingerprints of every image ``items_file`` names."""
    from retrievers.vqa_library import read_items

    items_file = Path(items_file)
    images = sorted({it.image for it in read_items(items_file)})
    rows = []
    for im in images:
        h = difference_hash(items_file.parent / im)
        rows.append(json.dumps({"image": im, "sha256": file_digest(items_file.parent / im),
                                "dhash": f"{h:064x}" if h is not None else None}))
    path = Path(out) / IMAGES_FILE
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover - the maintainers' rebuild, see the docstring
    if len(sys.argv) != 3:
        sys.exit("usage: python -m retrievers.shipped_library ITEMS_JSONL OUT_DIR")
    sys.stdout.write(f"{build_shipped(sys.argv[1], sys.argv[2])}\n")
