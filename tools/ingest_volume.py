"""Volumes: a folder of DICOM slices or a NIfTI file as one ``(S, H, W)`` image, and CT windows.

Conventions (all volumes ``load_image`` returns):

* ``pixels`` is ``(S, H, W)`` float32 modality values (HU for CT). For a DICOM series, slices
  are sorted by ImagePositionPatient projected on the slice normal (row cosine x column
  cosine from ImageOrientationPatient), ascending, so for axial slices S runs feet -> head;
  rows and columns are as stored in the files. For NIfTI the data is reoriented to the closest
  RAS axes and laid out as radiological axial slices: S = inferior -> superior, rows =
  anterior -> posterior, columns = patient right -> left.
* ``spacing_mm`` is ``(row, col)`` in-plane spacing; ``meta["slice_spacing_mm"]`` is the distance
  between slice centres from the geometry (positions or NIfTI zooms), never SliceThickness,
  which is the slab width and often differs (gaps, overlap).
* ``display`` is the middle slice, windowed with the middle file's own window when it has one.

``window`` maps HU to uint8 with named presets; ``orthogonal_views`` cuts the three middle
planes of a volume.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError, ToolInputError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest_guard import (
    DEFAULT_DECODE_TIMEOUT_S,
    MAX_PIXELS,
    ImageTooLargeError,
    InvalidDimensionsError,
    check_dimensions,
    check_file_size,
    check_preamble,
)

__all__ = ["WINDOW_PRESETS", "load_nifti", "load_series", "orthogonal_views", "window"]

# CT window presets as (center, width) in Hounsfield units: the usual radiology reading windows.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

# A folder with more files than this is not one series a person would ask about; refusing early
# keeps a wrong folder (a whole archive) from being read.
MAX_SERIES_FILES = 4000

# Positions closer than this (mm) along the normal are the same slice location.
_SAME_POSITION_MM = 1e-3
# Relative tolerance for gaps between slices before the spacing is called irregular.
_SPACING_TOLERANCE = 0.05


def window(hu: np.ndarray, preset: str | tuple[float, float]) -> np.ndarray:
    """CT values in HU -> uint8 grey through a linear window.

    Args:
        hu: any-shape array of Hounsfield units.
        preset: a name from ``WINDOW_PRESETS`` (lung, mediastinum, bone, brain, abdomen) or a
            ``(center, width)`` pair in HU.

    Returns:
        uint8 array of ``hu``'s shape: ``center - width/2`` and below -> 0, ``center + width/2``
        and above -> 255, linear in between (NaN -> 0). E.g. lung maps -1350 HU -> 0 and
        150 HU -> 255.

    Raises:
        ToolInputError: unknown preset name or a width that is not positive.
    """
    if isinstance(preset, str):
        key = preset.strip().lower()
        if key not in WINDOW_PRESETS:
            raise ToolInputError(
                f"unknown window preset {preset!r}; use one of {', '.join(WINDOW_PRESETS)} "
                "or a (center, width) pair in HU"
            )
        center, width = WINDOW_PRESETS[key]
    else:
        center, width = (float(v) for v in preset)
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise ToolInputError(f"window width must be a positive number of HU, got {width}")
    lo = center - width / 2.0
    unit = (np.asarray(hu, dtype=np.float64) - lo) / width
    unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


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
        "coronal": volume[::-1, h // 2],
        "sagittal": volume[::-1, :, w // 2],
    }


# =============================================================================================
# DICOM series
# =============================================================================================
def load_series(
    folder: Path, *, allow_polyglot: bool = False,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
) -> LoadedImage:
    """Assemble the DICOM files of one folder (one slice per file) into a volume.

    Files without the ``DICM`` prefix (and hidden files) are skipped and counted in a note; every
    DICOM file goes through the same checks as a single file (preamble, dimensions, isolated
    decoding). Sub-folders are not read.

    Raises:
        NotAnImageError: no DICOM file in the folder.
        IngestError: several series (the message names their SeriesInstanceUIDs), slices that
            disagree on size / orientation / spacing, or two slices at one position.
        ImageTooLargeError: too many files, or the volume would exceed ``MAX_PIXELS``.
    """
    from tools import loader

    name = folder.name
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if len(files) > MAX_SERIES_FILES:
        raise ImageTooLargeError(f"{name}: folder holds {len(files)} files, more than the "
                                 f"{MAX_SERIES_FILES} read as one series")
    notes: list[str] = []
    dicoms: list[Path] = []
    for f in files:
        check_file_size(f.name, f.stat().st_size)
        with f.open("rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM":
            note = check_preamble(f.name, head[:128], allow_polyglot=allow_polyglot)
            if note and note not in notes:
                notes.append(note)
            dicoms.append(f)
    skipped = len(files) - len(dicoms)
    if not dicoms:
        raise NotAnImageError(f"{name}: folder holds no DICOM files")
    if skipped:
        notes.append(f"{skipped} non-DICOM file(s) in the folder were ignored")

    headers = [loader._read_checked_dicom(f) for f in dicoms]
    _one_series(name, [ds for ds, _ in headers])
    if len(headers) == 1:
        img = loader._load_dicom(dicoms[0], decode_timeout_s)
        img.notes[:0] = notes
        return img
    order, positions, geometry_notes = _sort_slices(name, [ds for ds, _ in headers])
    notes += geometry_notes
    rows, cols = int(headers[0][0].Rows), int(headers[0][0].Columns)
    check_dimensions(name, rows, cols, len(headers), 1)

    slices: list[np.ndarray] = []
    for i in order:
        ds, tsuid = headers[i]
        arr, photometric = loader.decode_pixels(dicoms[i].name, ds, tsuid, decode_timeout_s)
        if photometric not in ("MONOCHROME1", "MONOCHROME2") or arr.ndim != 2:
            raise UnsupportedImageError(f"{name}: series of {photometric} or multi-frame files "
                                        "are not assembled into volumes")
        slices.append(_modality_values(ds, arr))
    volume = np.stack(slices)  # (S, H, W)
    mid = order[len(order) // 2]
    ds_mid = headers[mid][0]
    middle = volume[len(order) // 2]
    display = loader._voi_display(ds_mid, middle, notes)
    if display is None:
        display = loader.percentile_window(middle)
    if str(ds_mid.get("PhotometricInterpretation")) == "MONOCHROME1":
        display = 255 - display

    spacing, source, spacing_notes = loader._dicom_spacing(ds_mid)
    notes += spacing_notes
    meta = loader._dicom_meta(ds_mid, headers[mid][1])
    gaps = np.diff(positions)
    meta["frames"] = len(order)
    meta["slice_spacing_mm"] = round(float(np.median(gaps)), 6)
    meta["units"] = "HU" if meta.get("modality") == "CT" and "RescaleIntercept" in ds_mid else (
        "a.u.")
    return LoadedImage(pixels=volume, display=display, spacing_mm=spacing,
                       spacing_source=source, meta=meta, source_format="dicom-series",
                       notes=notes)


def _one_series(name: str, datasets: list[Any]) -> None:
    """Refuse a folder mixing series; the message lists the SeriesInstanceUIDs found."""
    uids = sorted({str(ds.get("SeriesInstanceUID", "(none)")) for ds in datasets})
    if len(uids) > 1:
        shown = ", ".join(uids[:5]) + (f" and {len(uids) - 5} more" if len(uids) > 5 else "")
        raise IngestError(f"{name}: folder mixes {len(uids)} series ({shown}); "
                          "put each series in its own folder")


def _sort_slices(name: str, datasets: list[Any]) -> tuple[list[int], np.ndarray, list[str]]:
    """Slice order along the normal, the sorted positions (mm) and geometry notes.

    Why the normal and not InstanceNumber or the z coordinate: instance numbers are often
    out of order or restart, and for oblique or sagittal stacks z is not the stacking axis.
    """
    notes: list[str] = []
    orient_raw = [_floats(ds.get("ImageOrientationPatient"), 6) for ds in datasets]
    pos_raw = [_floats(ds.get("ImagePositionPatient"), 3) for ds in datasets]
    orient = [o for o in orient_raw if o is not None]
    pos = [p for p in pos_raw if p is not None]
    if len(orient) != len(datasets) or len(pos) != len(datasets):
        raise InvalidDimensionsError(f"{name}: some slices lack ImageOrientationPatient / "
                                     "ImagePositionPatient; the slice order cannot be known")
    o0 = np.array(orient[0])
    if any(not np.allclose(o, o0, atol=1e-4) for o in orient):
        raise IngestError(f"{name}: slices have different orientations; not one volume")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise IngestError(f"{name}: slices have different sizes {sorted(sizes)}; not one volume")
    spacings = {tuple(_floats(ds.get("PixelSpacing"), 2) or ()) for ds in datasets}
    if len(spacings) > 1:
        raise IngestError(f"{name}: slices have different PixelSpacing; not one volume")
    normal = np.cross(o0[:3], o0[3:])
    if np.linalg.norm(normal) < 1e-6:
        raise InvalidDimensionsError(f"{name}: ImageOrientationPatient is degenerate")
    normal /= np.linalg.norm(normal)
    along = np.array([float(np.dot(p, normal)) for p in pos])  # mm along the normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions = along[order]
    gaps = np.diff(positions)
    if (gaps < _SAME_POSITION_MM).any():
        raise IngestError(f"{name}: two or more slices share a position "
                          "(duplicates or several acquisitions in one series)")
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > _SPACING_TOLERANCE * median:
        notes.append(f"slice gaps are irregular ({gaps.min():.3g}-{gaps.max():.3g} mm); "
                     f"slice_spacing_mm is their median, {median:.3g} mm")
    return order, positions, notes


def _floats(value: Any, n: int) -> list[float] | None:
    """Exactly ``n`` finite floats from a DICOM multi-value, else None."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _modality_values(ds: Any, arr: np.ndarray) -> np.ndarray:
    """Rescaled values (HU for CT) as float32 ``(H, W)``."""
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)


# =============================================================================================
# NIfTI
# =============================================================================================
def load_nifti(path: Path) -> LoadedImage:
    """Read a ``.nii`` / ``.nii.gz`` volume through nibabel.

    The header's dimensions are checked before the data is read; the volume is reoriented to
    the closest RAS axes (``as_closest_canonical``) and laid out as radiological axial slices
    (see the module docstring). Spacing comes from the header zooms (mm when ``xyzt_units``
    says mm or says nothing). A 4D file keeps its first volume, with a note.

    Raises:
        NotAnImageError: nibabel cannot read it as NIfTI.
        ImageTooLargeError / InvalidDimensionsError: absurd header dimensions.
    """
    import nibabel as nib

    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, ValueError, ...
        raise NotAnImageError(f"{name}: not a readable NIfTI file ({_line(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NotAnImageError(f"{name}: not a NIfTI-1/2 image")
    shape = tuple(int(v) for v in img.shape)
    notes: list[str] = []
    if len(shape) < 2 or len(shape) > 4:
        raise UnsupportedImageError(f"{name}: NIfTI with {len(shape)} dimensions is not read")
    shape3 = (*shape[:3], *([1] * (3 - len(shape[:3]))))
    check_dimensions(name, shape3[1], shape3[0], shape3[2], 1, max_pixels=MAX_PIXELS)
    try:
        if len(shape) == 4:
            notes.append(f"4D NIfTI with {shape[3]} volumes: only the first is loaded")
            img = img.slicer[..., 0]
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        units = img.header.get_xyzt_units()[0]
    except Exception as exc:  # corrupt data / affine
        raise IngestError(f"{name}: NIfTI data cannot be read ({_line(exc)})") from exc
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
    from tools.loader import percentile_window

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
    notes.append("NIfTI carries no modality; values are shown as stored (scaled by the header)")
    return LoadedImage(pixels=volume, display=percentile_window(middle), spacing_mm=spacing,
                       spacing_source="NIfTI pixdim" if spacing else None, meta=meta,
                       source_format="nifti", notes=notes)


def _line(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
