"""The in-memory form of a loaded image, and the reference the graph state keeps instead.

``LoadedImage`` is what a loader returns: the pixels, a display rendering, spacing and the
de-identified metadata. ``ImageRef`` is the small, JSON-able handle (id + summary) that goes into
graph state, prompts and checkpoints; the pixels stay in the ``ImageStore``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        pixels: modality values. 2D ``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(F, H, W)`` grey
            frames / slices, or ``(F, H, W, 3)`` colour frames. Grey and colour are told apart
            by ``display.ndim``. CT is in Hounsfield units (rescale slope/intercept applied).
        display: ``uint8`` rendering of the representative 2D frame, ``(H, W)`` or ``(H, W, 3)``,
            with the file's VOI LUT / window applied and MONOCHROME1 inverted, so bright means
            dense everywhere.
        spacing_mm: ``(row, col)`` mm per pixel of ``display``, or None when unknown. Never
            invented: a missing spacing stays None and measurements fall back to pixels.
        spacing_source: the DICOM attribute the spacing came from, or None.
        meta: de-identified metadata only (modality, body part, sizes...), safe to show a model.
        source_format: "dicom", "png", "jpeg", ...
        notes: caveats worth telling the user (e.g. projection-radiograph magnification).
    """

    pixels: np.ndarray
    display: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source_format: str = "unknown"
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """Number of frames / slices (1 for a single 2D image)."""
        colour = self.display.ndim == 3
        if self.pixels.ndim == 4 or (self.pixels.ndim == 3 and not colour):
            return int(self.pixels.shape[0])
        return 1

    def content_id(self) -> str:
        """A stable id from the pixel content: the same image always gets the same id."""
        h = hashlib.sha256()
        h.update(str(self.pixels.shape).encode())
        h.update(str(self.pixels.dtype).encode())
        h.update(np.ascontiguousarray(self.pixels).tobytes())
        return "img-" + h.hexdigest()[:12]


class ImageRef(BaseModel):
    """What graph state and prompts know about an image: an id and a de-identified summary."""

    model_config = ConfigDict(frozen=True)

    id: str
    modality: str = "unknown"
    shape: tuple[int, ...] = ()
    spacing_mm: tuple[float, float] | None = None
    source_format: str = "unknown"
    summary: str = ""
    # For a plane cut from a volume: the volume's id and the plane (axial, coronal, ...).
    volume_id: str | None = None
    plane: str | None = None
    # The share of coloured pixels (``colour_share``): a tool whose domain is grey-scale is
    # not offered a colour picture. None: not measured (a ref saved before it was).
    colour: float | None = None

    def for_prompt(self) -> str:
        """One line describing the image to the planner."""
        return f"{self.id}: {self.summary}"


COLOURED_CHROMA = 40
"""A pixel is coloured when its channels differ by more than this (of 255): JPEG noise on a
grey image stays well below it."""

def colour_share(display: Any) -> float:
    """The share of a display's pixels whose channels differ by more than ``COLOURED_CHROMA``.

    0.0 for a grey ``(H, W)`` display.
    """
    a = np.asarray(display)
    if a.ndim != 3 or a.shape[-1] < 3:
        return 0.0
    rgb = a[..., :3].astype(np.int16)
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOURED_CHROMA).mean())


def to_rgb(display: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W, 3)`` copy of a ``(H, W)`` grey or ``(H, W, 3|4)`` colour display.

    What overlays draw on and what image processors expect (grey repeated to three channels,
    an alpha channel dropped). Raises ``ValueError`` for any other shape.
    """
    a = np.asarray(display)
    if a.ndim == 2:
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] >= 3:
        return np.ascontiguousarray(a[..., :3].astype(np.uint8))
    raise ValueError(f"display must be (H, W) or (H, W, 3), got {a.shape}")
