"""Volumes: a folder of DICOM slices or a NIfTI file as one ``(S, H, W)`` image, and CT windows.

Conventions (all volumes ``load_image`` returns):

* ``pixels`` is ``(S, H, W)`` float32 modality values (HU for CT). For a DICOM series, slices
  are sorted by ImagePositionPatient projected on the slice normal (row cosine x column
  cosine from ImageOrientationPatient), ascending (for axial stacks the normal is taken
  pointing superior, so S runs feet -> head); rows and columns are as stored in the files.
  ``meta["slice_orientation"]`` says axial / coronal / sagittal / oblique (NIfTI: axial).
  For NIfTI the data is reoriented to the closest RAS axes and laid out as radiological axial
  slices: S = inferior -> superior, rows = anterior -> posterior, columns = patient right ->
  left.
* ``spacing_mm`` is ``(row, col)`` in-plane spacing; ``meta["slice_spacing_mm"]`` is the distance
  between slice centres from the geometry (positions or NIfTI zooms), never SliceThickness,
  which is the slab width and often differs (gaps, overlap).
* ``display`` is the middle slice, windowed with the middle file's own window when it has one.

``window`` maps HU to uint8 with named presets; ``orthogonal_views`` cuts the three middle
planes of a volume; ``volume_plane`` turns one plane into a 2D ``LoadedImage`` of its own
(what the image store registers so that the 2D tools work on volumes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError, ToolInputError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.guard import (
    DEFAULT_DECODE_TIMEOUT_S,
    MAX_PIXELS,
    ImageTooLargeError,
    InvalidDimensionsError,
    check_dimensions,
    check_file_size,
    check_preamble,
)

__all__ = [
    "PLANES",
    "WINDOW_PRESETS",
    "is_volume",
    "load_nifti",
    "load_series",
    "orthogonal_views",
    "view_planes",
    "volume_plane",
    "window",
]

# CT window presets as (center, width) in Hounsfield units: the usual radiology reading windows.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

# The most voxel-data bytes one NIfTI volume may inflate to: MAX_PIXELS float32 voxels (1 GiB).
MAX_NIFTI_BYTES = MAX_PIXELS * 4

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
# 2D planes of a volume, for the 2D tools
# =============================================================================================
# Plane names volume_plane accepts. "slice" is the stack's own plane whatever its orientation;
# the anatomical names need an axial stack (the layout orthogonal_views assumes).
PLANES = ("slice", "axial", "coronal", "sagittal")


def is_volume(img: LoadedImage) -> bool:
    """Whether ``img`` is a grey ``(S, H, W)`` volume (a DICOM series or NIfTI) with planes.

    Multi-frame single files (cine, NM frames) are not volumes: their frames are not known to
    be parallel slices at a regular spacing.
    """
    return (img.source_format in ("dicom-series", "nifti") and img.pixels.ndim == 3
            and img.display.ndim == 2 and img.pixels.shape[0] > 1)


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
    if values.size > 4_000_000:  # an even sample is plenty for two percentiles
        values = values.ravel()[:: values.size // 4_000_000 + 1]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi


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
    from tools.ingest import loader

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
    order, positions, geometry_notes, orientation = _sort_slices(name, [ds for ds, _ in headers])
    notes += geometry_notes
    rows, cols = int(headers[0][0].Rows), int(headers[0][0].Columns)
    check_dimensions(name, rows, cols, len(headers), 1)

    volume = np.empty((len(order), rows, cols), dtype=np.float32)  # (S, H, W), filled in place
    for out, i in enumerate(order):
        ds, tsuid = headers[i]
        arr, photometric = loader.decode_pixels(dicoms[i].name, ds, tsuid, decode_timeout_s)
        if photometric not in ("MONOCHROME1", "MONOCHROME2") or arr.shape != (rows, cols):
            raise UnsupportedImageError(f"{name}: series of {photometric} or multi-frame files "
                                        "are not assembled into volumes")
        _modality_values_into(ds, arr, volume[out])
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
    meta["slice_orientation"] = orientation
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


def _sort_slices(name: str, datasets: list[Any]
                 ) -> tuple[list[int], np.ndarray, list[str], str]:
    """Slice order along the normal, the sorted positions (mm), geometry notes, orientation.

    The orientation is ``axial`` / ``coronal`` / ``sagittal`` when the slice normal is within
    about 10 degrees of a patient axis, else ``oblique``.

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
    axis = int(np.argmax(np.abs(normal)))
    orientation = ("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) > 0.985 else (
        "oblique")
    if orientation == "axial" and normal[2] < 0:
        normal = -normal  # axial stacks always run feet -> head (+z is superior in DICOM)
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
    return order, positions, notes, orientation


def _floats(value: Any, n: int) -> list[float] | None:
    """Exactly ``n`` finite floats from a DICOM multi-value, else None."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _modality_values_into(ds: Any, arr: np.ndarray, out: np.ndarray) -> None:
    """Write rescaled values (HU for CT) of one slice into the float32 ``(H, W)`` ``out``.

    The usual linear rescale (slope, intercept) is computed in float32 straight into the
    volume, without pydicom's float64 copy per slice (a 40-slice CT stacked from float64
    slices peaked at twice its size); a Modality LUT Sequence goes through pydicom.
    """
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        out[...] = apply_modality_lut(arr, ds)
        return
    out[...] = arr
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:  # pydicom's rule: both or none
        return
    slope = _float_or(ds.get("RescaleSlope"), 1.0)
    intercept = _float_or(ds.get("RescaleIntercept"), 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def _float_or(value: Any, default: float) -> float:
    """A finite DICOM DS value as float, else ``default`` (absent, empty or malformed)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f if np.isfinite(f) else default


# =============================================================================================
# NIfTI
# =============================================================================================
def load_nifti(path: Path) -> LoadedImage:
    """Read a ``.nii`` / ``.nii.gz`` volume through nibabel (see ``_read_nifti``).

    nibabel logs header repairs ("sizeof_hdr should be 348...") to stderr through its own
    handler; they are silenced here, so a malformed file gives its one-line error and nothing
    else (the CLI's contract), and warnings are dropped the same way.
    """
    from nibabel.imageglobals import LoggingOutputSuppressor

    with LoggingOutputSuppressor(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_nifti(path)


def _read_nifti(path: Path) -> LoadedImage:
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
    # A .nii.gz of zeros is a decompression bomb: bound the bytes nibabel will inflate and
    # hold (the data type's size times the voxels of the one volume read), like MAX_PIXELS.
    try:
        itemsize = int(img.get_data_dtype().itemsize)
    except Exception as exc:  # an unknown datatype code
        raise UnsupportedImageError(f"{name}: NIfTI data type is not readable "
                                    f"({_line(exc)})") from exc
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
    from tools.ingest.loader import percentile_window

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


def _line(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
