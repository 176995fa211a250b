"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) into a ``LoadedImage``, through nibabel.

Layout (see ``tools.planes`` for what is cut from it): the data is reoriented to the closest
RAS axes and laid out as radiological axial slices, ``pixels`` ``(S, H, W)`` float32 with
S = inferior -> superior, rows = anterior -> posterior, columns = patient right -> left.
``spacing_mm`` is the ``(row, col)`` in-plane voxel size and ``meta["slice_spacing_mm"]`` the
slice step, both from the header's zooms (mm when ``xyzt_units`` says mm or says nothing).
NIfTI has no modality: values are shown as stored (scaled by the header), windowed to their
percentiles.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.guard import MAX_PIXELS, ImageTooLargeError, check_dimensions
from tools.ingest.values import one_line
from tools.ingest.windowing import percentile_window

__all__ = ["MAX_NIFTI_BYTES", "load_nifti"]

# The most voxel-data bytes one NIfTI volume may inflate to: MAX_PIXELS float32 voxels (1 GiB).
MAX_NIFTI_BYTES = MAX_PIXELS * 4


def load_nifti(path: Path) -> LoadedImage:
    """Read a ``.nii`` / ``.nii.gz`` volume through nibabel (see ``_read_nifti``).

    nibabel logs header repairs ("sizeof_hdr should be 348...") to stderr through its own
    handler; they are silenced here, so a malformed file gives its one-line error and nothing
    else (the CLI's contract), and warnings are dropped the same way.

    Raises:
        NotAnImageError: nibabel cannot read it as NIfTI.
        ImageTooLargeError / InvalidDimensionsError: absurd header dimensions, or more than
            ``MAX_NIFTI_BYTES`` of voxel data (a gzip bomb).
        UnsupportedImageError: fewer than 2 or more than 4 dimensions, an unknown data type.
        IngestError: corrupt voxel data or affine.
    """
    from nibabel.imageglobals import LoggingOutputSuppressor  # nibabel only for NIfTI files

    with LoggingOutputSuppressor(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_nifti(path)


def _read_nifti(path: Path) -> LoadedImage:
    """Read a ``.nii`` / ``.nii.gz`` volume through nibabel.

    The header's dimensions are checked before the data is read; the volume is reoriented to
    the closest RAS axes (``as_closest_canonical``) and laid out as radiological axial slices
    (see the module docstring). A 4D file keeps its first volume, with a note.
    """
    import nibabel as nib

    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, ValueError, ...
        raise NotAnImageError(f"{name}: not a readable NIfTI file ({one_line(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NotAnImageError(f"{name}: not a NIfTI-1/2 image")
    shape = tuple(int(v) for v in img.shape)
    notes: list[str] = []
    if len(shape) < 2 or len(shape) > 4:
        raise UnsupportedImageError(f"{name}: NIfTI with {len(shape)} dimensions is not read")
    shape3 = (*shape[:3], *([1] * (3 - len(shape[:3]))))
    check_dimensions(name, shape3[1], shape3[0], shape3[2], 1, max_pixels=MAX_PIXELS)
    # A .nii.gz of zeros is a decompression bomb: bound the bytes nibabel will inflate and
    # hold (the data type's size times the voxels of the one volume read), like MAX_PIXELS.
    try:
        itemsize = int(img.get_data_dtype().itemsize)
    except Exception as exc:  # an unknown datatype code
        raise UnsupportedImageError(f"{name}: NIfTI data type is not readable "
                                    f"({one_line(exc)})") from exc
    raw_bytes = shape3[0] * shape3[1] * shape3[2] * itemsize
    if raw_bytes > MAX_NIFTI_BYTES:
        raise ImageTooLargeError(f"{name}: image is too large to load safely ({raw_bytes} "
                                 f"bytes of voxel data, limit {MAX_NIFTI_BYTES})")
    try:
        if len(shape) == 4:
            notes.append(f"4D NIfTI with {shape[3]} volumes: only the first is loaded")
            img = img.slicer[..., 0]
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        units = img.header.get_xyzt_units()[0]
    except Exception as exc:  # corrupt data / affine
        raise IngestError(f"{name}: NIfTI data cannot be read ({one_line(exc)})") from exc
    while data.ndim < 3:
        data = data[..., None]
        zooms.append(1.0)
    # (X=R, Y=A, Z=S) -> (S, H, W): slices inferior->superior, rows anterior->posterior,
    # columns patient right->left (radiological convention).
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    spacing: tuple[float, float] | None = (zooms[1], zooms[0])
    if units not in ("mm", "unknown") or min(zooms) <= 0 or not all(np.isfinite(zooms)):
        notes.append(f"NIfTI voxel sizes {zooms} in {units!r} are not usable mm; spacing unknown")
        spacing = None
    middle = volume[volume.shape[0] // 2]
    meta: dict[str, Any] = {
        "modality": "unknown",
        "rows": int(volume.shape[1]),
        "columns": int(volume.shape[2]),
        "frames": int(volume.shape[0]),
        "units": "a.u.",
    }
    if spacing is not None:
        meta["slice_spacing_mm"] = zooms[2]
    meta["slice_orientation"] = "axial"  # reoriented to RAS and laid out as axial slices
    notes.append("NIfTI carries no modality; values are shown as stored (scaled by the header)")
    return LoadedImage(pixels=volume, display=percentile_window(middle), spacing_mm=spacing,
                       spacing_source="NIfTI pixdim" if spacing else None, meta=meta,
                       source_format="nifti", notes=notes)
