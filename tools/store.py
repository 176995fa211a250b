"""A content-addressed image store on disk.

Graph state and checkpoints hold image ids only; the arrays live here, keyed by the id that
``LoadedImage.content_id`` derives from the pixels. A volume (DICOM series, NIfTI) is stored
whole under its id; ``put_plane`` / ``put_views`` store planes cut from it (``tools.planes``) as
2D images of their own (with ``volume_id`` in their meta), which is how the 2D tools work on
volumes. The store persists to a folder so that a conversation resumed from its checkpoint in a
new process still finds its images. Only de-identified metadata is written: the loader strips
identifiers before anything reaches here.

Layout::

    ROOT/<image id>/pixels.npy     modality values
    ROOT/<image id>/display.npy    uint8 rendering
    ROOT/<image id>/meta.json      spacing, de-identified metadata, notes
    ROOT/arrays/<key>.npy          derived arrays (masks, embeddings) referenced by evidence
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path

import numpy as np

from tools.errors import ToolInputError
from tools.image import ImageRef, LoadedImage, colour_share
from tools.planes import is_volume, view_planes, volume_plane

_ID = re.compile(r"^img-[0-9a-f]{12}$")
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def default_home() -> Path:
    """Medloop's data folder when none is configured: ``~/.cache/medloop``.

    ``MEDLOOP_HOME`` is read by ``AgentContext.from_env`` (the one reader of settings), which
    passes the folder down; nothing in ``tools`` reads the environment.
    """
    return Path.home() / ".cache" / "medloop"


class ImageStore:
    """Images and derived arrays by id, on disk with a small in-process cache."""

    def __init__(self, root: str | Path | None = None, cache_size: int = 8) -> None:
        self.root = Path(root) if root is not None else default_home() / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "arrays").mkdir(exist_ok=True)
        self._cache: dict[str, LoadedImage] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # -- images ---------------------------------------------------------------------------
    def put(self, image: LoadedImage) -> ImageRef:
        """Store an image (idempotent: the id comes from the pixels) and return its ref."""
        image_id = image.content_id()
        folder = self.root / image_id
        if not (folder / "meta.json").exists():
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            np.save(tmp / "pixels.npy", image.pixels, allow_pickle=False)
            np.save(tmp / "display.npy", image.display, allow_pickle=False)
            meta = {
                "spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
                "spacing_source": image.spacing_source,
                "meta": image.meta,
                "source_format": image.source_format,
                "notes": image.notes,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
            try:
                tmp.rename(folder)  # atomic: readers never see a half-written image
            except OSError:
                # Another writer stored the same content first; theirs is identical.
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
        self._remember(image_id, image)
        return self.ref(image_id)

    def get(self, image_id: str) -> LoadedImage:
        """The image with this id. Raises ``ToolInputError`` naming the known ids if absent."""
        with self._lock:
            hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        folder = self.root / image_id if _ID.match(image_id or "") else None
        if folder is None or not (folder / "meta.json").exists():
            raise ToolInputError(f"unknown image id {image_id!r}")
        meta = json.loads((folder / "meta.json").read_text())
        image = LoadedImage(
            pixels=np.load(folder / "pixels.npy", allow_pickle=False),
            display=np.load(folder / "display.npy", allow_pickle=False),
            spacing_mm=(float(meta["spacing_mm"][0]), float(meta["spacing_mm"][1]))
            if meta["spacing_mm"]
            else None,
            spacing_source=meta["spacing_source"],
            meta=meta["meta"],
            source_format=meta["source_format"],
            notes=meta["notes"],
        )
        self._remember(image_id, image)
        return image

    def __contains__(self, image_id: object) -> bool:
        return (
            isinstance(image_id, str)
            and bool(_ID.match(image_id))
            and (self.root / image_id / "meta.json").exists()
        )

    def ref(self, image_id: str) -> ImageRef:
        """The state-safe reference for a stored image."""
        img = self.get(image_id)
        return make_ref(image_id, img)

    # -- volumes --------------------------------------------------------------------------
    def put_plane(self, volume_id: str, plane: str, index: int | None = None) -> ImageRef:
        """Store one plane of a stored volume as a 2D image; returns the plane's ref.

        The plane is an ordinary image (content id, pixels in the volume's units, spacing in
        mm), so every 2D tool works on it; its meta keeps ``volume_id``, ``plane`` and
        ``slice_index`` so answers can say where it came from. See
        ``tools.planes.volume_plane`` for planes, indices and spacing.

        Raises:
            ToolInputError: unknown id, not a volume, or a bad plane / index.
        """
        img = volume_plane(self.get(volume_id), plane, index)
        img.meta["volume_id"] = volume_id
        return self.put(img)

    def put_views(self, volume_id: str) -> list[ImageRef]:
        """Store the middle planes of a volume; returns their refs (idempotent: content ids).

        Axial stacks give their middle axial, coronal and sagittal planes; other stacks their
        middle slice only (see ``tools.planes.view_planes``).
        """
        vol = self.get(volume_id)
        return [self.put_plane(volume_id, plane, index) for plane, index in view_planes(vol)]

    def _remember(self, image_id: str, image: LoadedImage) -> None:
        with self._lock:
            self._cache[image_id] = image
            while len(self._cache) > self._cache_size:
                self._cache.pop(next(iter(self._cache)))

    # -- derived arrays -------------------------------------------------------------------
    def put_array(self, array: np.ndarray, key: str | None = None) -> str:
        """Keep a derived array (a mask, an embedding); returns its key."""
        key = key or uuid.uuid4().hex
        if not _KEY.match(key):
            raise ValueError(f"bad array key {key!r}")
        np.save(self.root / "arrays" / f"{key}.npy", array, allow_pickle=False)
        return key

    def get_array(self, key: str) -> np.ndarray:
        """A derived array by key."""
        path = self.root / "arrays" / f"{key}.npy"
        if not _KEY.match(key or "") or not path.exists():
            raise ToolInputError(f"unknown array key {key!r}")
        return np.load(path, allow_pickle=False)


def make_ref(image_id: str, img: LoadedImage) -> ImageRef:
    """Summarise a loaded image in one de-identified line for the planner."""
    modality = str(img.meta.get("modality") or "unknown")
    h, w = img.display.shape[:2]
    parts = [f"{modality}"]
    if img.meta.get("body_part"):
        parts.append(str(img.meta["body_part"]).lower())
    plane = img.meta.get("plane") if img.source_format == "volume-plane" else None
    volume_id = img.meta.get("volume_id") if plane else None
    if plane:
        where = f" of {volume_id}" if volume_id else ""
        parts.append(f"{plane} plane {int(img.meta.get('slice_index', 0)) + 1}/"
                     f"{img.meta.get('planes_total', '?')}{where}")
    parts.append(f"{w}x{h} px")
    if is_volume(img):
        gap = img.meta.get("slice_spacing_mm")
        parts.append(f"{img.frames}-slice {img.meta.get('slice_orientation', '')} volume".replace(
            "  ", " ") + (f", slices {float(gap):.3g} mm apart" if gap else "")
                     + " (middle slice shown)")
    elif img.frames > 1:
        parts.append(f"{img.frames} frames")
    if img.spacing_mm:
        parts.append(f"spacing {img.spacing_mm[0]:.3g}x{img.spacing_mm[1]:.3g} mm")
    else:
        parts.append("pixel spacing unknown")
    return ImageRef(
        id=image_id,
        modality=modality,
        shape=tuple(int(s) for s in img.pixels.shape),
        spacing_mm=img.spacing_mm,
        source_format=img.source_format,
        summary=", ".join(parts),
        volume_id=str(volume_id) if volume_id else None,
        plane=str(plane) if plane else None,
        colour=round(colour_share(img.display), 4),
    )
