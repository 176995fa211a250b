"""A folder of DICOM slices (one series, one slice per file) into one ``(S, H, W)`` volume.

Conventions (what ``load_series`` returns):

* ``pixels`` is ``(S, H, W)`` float32 modality values (HU for CT). Slices are sorted by
  ImagePositionPatient projected on the slice normal (row cosine x column cosine from
  ImageOrientationPatient), ascending; for axial stacks the normal is taken pointing superior,
  so S runs feet -> head. Rows and columns are as stored in the files.
  ``meta["slice_orientation"]`` says axial / coronal / sagittal / oblique.
* ``spacing_mm`` is the ``(row, col)`` in-plane spacing; ``meta["slice_spacing_mm"]`` is the
  distance between slice centres from the positions, never SliceThickness, which is the slab
  width and often differs (gaps, overlap).
* ``display`` is the middle slice, windowed with the middle file's own window when it has one.

Every file goes through the same checks as a single DICOM file (``tools.ingest.dicom``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import IngestError, NotAnImageError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.dicom import (
    DICOM_HEADER_BYTES,
    PREAMBLE_BYTES,
    decode_pixels,
    has_dicm_prefix,
    load_dicom,
    read_checked_dicom,
)
from tools.ingest.dicom_meta import dicom_meta, dicom_spacing, dicom_units, section_plane
from tools.ingest.guard import (
    DEFAULT_DECODE_TIMEOUT_S,
    ImageTooLargeError,
    InvalidDimensionsError,
    check_dimensions,
    check_file_size,
    check_preamble,
)
from tools.ingest.values import exact_floats, float_or
from tools.ingest.windowing import percentile_window, voi_display

__all__ = ["MAX_SERIES_FILES", "load_series"]

# A folder with more files than this is not one series a person would ask about; refusing early
# keeps a wrong folder (a whole archive) from being read.
MAX_SERIES_FILES = 4000

# A stack is axial / coronal / sagittal (and may be reformatted) within this of an axis.
_WITHIN_DEGREES = 10.0
# Positions closer than this (mm) along the normal are the same slice location.
_SAME_POSITION_MM = 1e-3
# Relative tolerance for gaps between slices before the spacing is called irregular.
_SPACING_TOLERANCE = 0.05


def load_series(
    folder: Path, *, allow_polyglot: bool = False,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
) -> LoadedImage:
    """Assemble the DICOM files of one folder (one slice per file) into a volume.

    Files without the ``DICM`` prefix (and hidden files) are skipped and counted in a note; every
    DICOM file goes through the same checks as a single file (preamble, dimensions, isolated
    decoding). Sub-folders are not read. A folder with one DICOM file gives that file's image.

    Raises:
        NotAnImageError: no DICOM file in the folder.
        IngestError: several series (the message names their SeriesInstanceUIDs), slices that
            disagree on size / orientation / spacing, or two slices at one position.
        ImageTooLargeError: too many files, or the volume would exceed ``MAX_PIXELS``.
    """
    name = folder.name
    dicoms, notes = _dicom_files(folder, allow_polyglot)
    headers = [read_checked_dicom(f) for f in dicoms]
    _one_series(name, [ds for ds, _ in headers])
    if len(headers) == 1:
        img = load_dicom(dicoms[0], decode_timeout_s)
        img.notes[:0] = notes
        return img
    order, positions, geometry_notes, orientation = _sort_slices(name, [ds for ds, _ in headers])
    notes += geometry_notes
    rows, cols = int(headers[0][0].Rows), int(headers[0][0].Columns)
    check_dimensions(name, rows, cols, len(headers), 1)

    volume = np.empty((len(order), rows, cols), dtype=np.float32)  # (S, H, W), filled in place
    for out, i in enumerate(order):
        ds, tsuid = headers[i]
        arr, photometric = decode_pixels(dicoms[i].name, ds, tsuid, decode_timeout_s)
        if photometric not in ("MONOCHROME1", "MONOCHROME2") or arr.shape != (rows, cols):
            raise UnsupportedImageError(f"{name}: series of {photometric} or multi-frame files "
                                        "are not assembled into volumes")
        _modality_values_into(ds, arr, volume[out])
    mid = order[len(order) // 2]
    ds_mid = headers[mid][0]
    middle = volume[len(order) // 2]
    display = voi_display(ds_mid, middle, notes)
    if display is None:
        display = percentile_window(middle)
    if str(ds_mid.get("PhotometricInterpretation")) == "MONOCHROME1":
        display = 255 - display

    spacing, source, spacing_notes = dicom_spacing(ds_mid)
    notes += spacing_notes
    meta = dicom_meta(ds_mid, headers[mid][1])
    gaps = np.diff(positions)
    meta["frames"] = len(order)
    meta["slice_spacing_mm"] = round(float(np.median(gaps)), 6)
    meta["slice_orientation"] = orientation
    meta["units"] = dicom_units(ds_mid, meta)
    return LoadedImage(pixels=volume, display=display, spacing_mm=spacing,
                       spacing_source=source, meta=meta, source_format="dicom-series",
                       notes=notes)


def _dicom_files(folder: Path, allow_polyglot: bool) -> tuple[list[Path], list[str]]:
    """The folder's DICOM Part 10 files (preambles checked) in name order, and notes."""
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
            head = fh.read(DICOM_HEADER_BYTES)
        if has_dicm_prefix(head):
            note = check_preamble(f.name, head[:PREAMBLE_BYTES], allow_polyglot=allow_polyglot)
            if note and note not in notes:
                notes.append(note)
            dicoms.append(f)
    skipped = len(files) - len(dicoms)
    if not dicoms:
        raise NotAnImageError(f"{name}: folder holds no DICOM files")
    if skipped:
        notes.append(f"{skipped} non-DICOM file(s) in the folder were ignored")
    return dicoms, notes


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
    orient_raw = [exact_floats(ds.get("ImageOrientationPatient"), 6) for ds in datasets]
    pos_raw = [exact_floats(ds.get("ImagePositionPatient"), 3) for ds in datasets]
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
    spacings = {tuple(exact_floats(ds.get("PixelSpacing"), 2) or ()) for ds in datasets}
    if len(spacings) > 1:
        raise IngestError(f"{name}: slices have different PixelSpacing; not one volume")
    normal = np.cross(o0[:3], o0[3:])
    if np.linalg.norm(normal) < 1e-6:
        raise InvalidDimensionsError(f"{name}: ImageOrientationPatient is degenerate")
    normal /= np.linalg.norm(normal)
    orientation = section_plane(o0, _WITHIN_DEGREES) or "oblique"
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


def _modality_values_into(ds: Any, arr: np.ndarray, out: np.ndarray) -> None:
    """Write rescaled values (HU for CT) of one slice into the float32 ``(H, W)`` ``out``.

    The usual linear rescale (slope, intercept) is computed in float32 straight into the
    volume, without pydicom's float64 copy per slice (a 40-slice CT stacked from float64
    slices peaked at twice its size); a Modality LUT Sequence goes through pydicom.
    """
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut  # pydicom only when reading DICOM

        out[...] = apply_modality_lut(arr, ds)
        return
    out[...] = arr
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:  # pydicom's rule: both or none
        return
    slope = float_or(ds.get("RescaleSlope"), 1.0)
    intercept = float_or(ds.get("RescaleIntercept"), 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
