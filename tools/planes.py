"""Volumes and their 2D planes: what the store cuts from a volume so the 2D tools can use it.

A volume is a grey ``(S, H, W)`` ``LoadedImage`` from a DICOM series folder or a NIfTI file
(``tools.ingest.series``, ``tools.ingest.nifti``); for axial stacks S runs feet -> head, H
anterior -> posterior and W patient right -> left. ``volume_plane`` turns one plane into a 2D
``LoadedImage`` of its own (what ``ImageStore.put_plane`` registers), ``view_planes`` names the
planes worth registering, and ``orthogonal_views`` cuts the three middle planes as arrays.

This is kernel code, below the store: it reads only ``LoadedImage`` fields, never files, so
that the store does not import the ingest package above it.
"""

from __future__ import annotations

import numpy as np

from tools.errors import ToolInputError
from tools.image import LoadedImage

__all__ = ["PLANES", "is_volume", "orthogonal_views", "view_planes", "volume_plane"]

# Plane names volume_plane accepts. "slice" is the stack's own plane whatever its orientation;
# the anatomical names need an axial stack (the layout orthogonal_views assumes).
PLANES = ("slice", "axial", "coronal", "sagittal")

# Above this many voxels the volume's percentile window comes from an even sample.
_PERCENTILE_SAMPLE = 4_000_000


def is_volume(img: LoadedImage) -> bool:
    """Whether ``img`` is a grey ``(S, H, W)`` volume (a DICOM series or NIfTI) with planes.

    Multi-frame single files (cine, NM frames) are not volumes: their frames are not known to
    be parallel slices at a regular spacing.
    """
    return (img.source_format in ("dicom-series", "nifti") and img.pixels.ndim == 3
            and img.display.ndim == 2 and img.pixels.shape[0] > 1)


def orthogonal_views(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The middle axial, coronal and sagittal planes of an ``(S, H, W)`` volume.

    Assumes the loader's layout for axial acquisitions (S feet -> head, H anterior ->
    posterior, W patient right -> left). Coronal ``(S, W)`` and sagittal ``(S, H)`` are flipped
    so that head is at the top. Planes are in voxels, not resampled: with thick slices they look
    squashed; scale rows by ``slice_spacing_mm / spacing_mm[0]`` to show true proportions.

    Returns:
        ``{"axial": (H, W), "coronal": (S, W), "sagittal": (S, H)}``, views (not copies).

    Raises:
        ToolInputError: ``volume`` is not 3D (or 4D with a trailing RGB axis).
    """
    if volume.ndim not in (3, 4) or (volume.ndim == 4 and volume.shape[-1] not in (3, 4)):
        raise ToolInputError(f"orthogonal_views needs an (S, H, W) volume, got {volume.shape}")
    s, h, w = volume.shape[:3]
    return {
        "axial": volume[s // 2],
        "coronal": _reformat(volume, "coronal", h // 2),
        "sagittal": _reformat(volume, "sagittal", w // 2),
    }


def volume_plane(vol: LoadedImage, plane: str, index: int | None = None) -> LoadedImage:
    """One 2D plane of a volume as an image of its own, so every 2D tool can work on it.

    Args:
        vol: a volume (``is_volume``), laid out ``(S, H, W)`` as ``load_image`` returns it.
        plane: ``"slice"`` / ``"axial"``: slice ``index`` along S, ``(H, W)``; ``"coronal"``:
            row ``index`` of every slice, ``(S, W)``; ``"sagittal"``: column ``index``,
            ``(S, H)``. Coronal and sagittal are flipped so that superior is at the top
            (as ``orthogonal_views``) and need an axial stack.
        index: 0-based position along the plane's axis; None = the middle one.

    Returns:
        A 2D ``LoadedImage``: ``pixels`` in the volume's units (HU for CT), ``display`` through
        the volume's own window (the file's window, else the volume's 0.5-99.5 percentiles, the
        same for every plane), ``spacing_mm`` (row, col) in mm: the in-plane spacing, and for
        coronal / sagittal rows the distance between slice centres. Not resampled. ``meta``
        adds ``plane``, ``slice_index`` and ``planes_total``.

    Raises:
        ToolInputError: not a volume, an unknown plane, an anatomical plane of a non-axial
            stack, or an index outside the volume.
    """
    if not is_volume(vol):
        raise ToolInputError("this image is not a volume (a DICOM series folder or NIfTI); "
                             "it has no planes to cut")
    key = plane.strip().lower()
    if key not in PLANES:
        raise ToolInputError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    orientation = str(vol.meta.get("slice_orientation") or "unknown")
    if key in ("coronal", "sagittal", "axial") and orientation != "axial":
        raise ToolInputError(f"the volume is a {orientation} stack: only plane 'slice' (its own "
                             f"slices) is available, not reformatted {key} planes")
    s, h, w = vol.pixels.shape
    total = {"slice": s, "axial": s, "coronal": h, "sagittal": w}[key]
    k = total // 2 if index is None else int(index)
    if not 0 <= k < total:
        raise ToolInputError(f"{key} index {k} is outside the volume (0-{total - 1})")
    pixels = vol.pixels[k] if key in ("slice", "axial") else _reformat(vol.pixels, key, k)
    spacing = _plane_spacing(vol, key)
    lo, hi = _volume_window(vol)
    display = np.round(np.clip((pixels.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
                       * 255.0).astype(np.uint8) if hi > lo else np.zeros(pixels.shape, np.uint8)
    if vol.meta.get("photometric") == "MONOCHROME1":
        display = 255 - display
    meta = {k2: v for k2, v in vol.meta.items() if k2 != "frames"}
    h2, w2 = pixels.shape
    meta.update(rows=int(h2), columns=int(w2), frames=1, plane=key, slice_index=k,
                planes_total=total)
    notes = [f"{key} plane {k + 1} of {total}, cut from a {s}-slice volume; not resampled"]
    if key in ("coronal", "sagittal"):
        notes.append("rows are the volume's slices, superior at the top"
                     + (f", {spacing[0]:.3g} mm apart" if spacing else ""))
    source = vol.spacing_source if key in ("slice", "axial") else "volume geometry"
    return LoadedImage(pixels=np.ascontiguousarray(pixels), display=display,
                       spacing_mm=spacing, spacing_source=source if spacing else None,
                       meta=meta, source_format="volume-plane", notes=notes)


def view_planes(vol: LoadedImage) -> list[tuple[str, int]]:
    """The planes worth registering for a volume: ``[(plane, index), ...]``, middle ones.

    Axial stacks: the middle axial, coronal and sagittal planes; other stacks: their middle
    slice only (reformats of a sagittal or oblique stack would be mislabelled).

    Raises:
        ToolInputError: ``vol`` is not a volume.
    """
    if not is_volume(vol):
        raise ToolInputError("this image is not a volume (a DICOM series folder or NIfTI); "
                             "it has no planes to cut")
    s, h, w = vol.pixels.shape
    if vol.meta.get("slice_orientation") == "axial":
        return [("axial", s // 2), ("coronal", h // 2), ("sagittal", w // 2)]
    return [("slice", s // 2)]


def _reformat(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Coronal row ``index`` ``(S, W)`` or sagittal column ``index`` ``(S, H)``, superior on top."""
    if plane == "coronal":
        return volume[::-1, index]
    return volume[::-1, :, index]


def _plane_spacing(vol: LoadedImage, plane: str) -> tuple[float, float] | None:
    """(row, col) mm of a plane: None when the volume's spacing (or slice spacing) is unknown."""
    if vol.spacing_mm is None:
        return None
    if plane in ("slice", "axial"):
        return vol.spacing_mm
    gap = vol.meta.get("slice_spacing_mm")
    if not isinstance(gap, int | float) or not np.isfinite(gap) or gap <= 0:
        return None
    return (float(gap), vol.spacing_mm[1] if plane == "coronal" else vol.spacing_mm[0])


def _volume_window(vol: LoadedImage) -> tuple[float, float]:
    """The grey range shown for every plane: the file's window, else volume percentiles."""
    centers, widths = vol.meta.get("window_center"), vol.meta.get("window_width")
    center = centers[0] if isinstance(centers, list) and centers else centers
    width = widths[0] if isinstance(widths, list) and widths else widths
    if isinstance(center, int | float) and isinstance(width, int | float) and width > 0:
        return float(center) - float(width) / 2.0, float(center) + float(width) / 2.0
    values = vol.pixels
    if values.size > _PERCENTILE_SAMPLE:  # an even sample is plenty for two percentiles
        values = values.ravel()[:: values.size // _PERCENTILE_SAMPLE + 1]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi
