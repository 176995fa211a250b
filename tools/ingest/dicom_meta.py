"""What a DICOM header may tell the rest of medloop: pixel spacing and whitelisted metadata.

This is the de-identification boundary of the loader. ``dicom_meta`` copies a whitelist of
technical attributes by keyword; names, ids, dates, UIDs, institution and every free-text
field are never copied, because free text can hold PHI (an empty BodyPartExamined is filled
from the descriptions' words, but only with a term of a closed vocabulary:
``tools.ingest.described_part``). Value Representations are checked too:
a CS value that breaks the CS rules is dropped, since a hostile or sloppy writer can put
anything, including a name, into any element. ``dicom_spacing`` reads the pixel spacing and
says where it came from; it is never guessed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tools.ingest.described_part import described_body_part
from tools.ingest.values import (
    as_float,
    as_floats,
    as_int,
    cs_code,
    first_item,
    positive_pair,
    raw_preview,
)

__all__ = ["MAGNIFICATION_NOTE", "dicom_meta", "dicom_spacing", "dicom_units", "section_plane"]

MAGNIFICATION_NOTE = (
    "spacing is ImagerPixelSpacing, measured at the detector: distances in the patient are "
    "smaller by the radiographic magnification, which is not corrected"
)

# The whitelist, by DICOM keyword -> meta key (lower-case snake_case).
_META_CODE = {  # CS: short codes
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "ImageLaterality": "laterality",
    "PatientOrientation": "patient_orientation",
    "PhotometricInterpretation": "photometric",
}
_META_INT = {  # US / IS
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "frames",
    "SamplesPerPixel": "samples_per_pixel",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PixelRepresentation": "pixel_representation",
}
_META_FLOAT = {  # DS, possibly multi-valued
    "PixelSpacing": "pixel_spacing",
    "ImagerPixelSpacing": "imager_pixel_spacing",
    "SliceThickness": "slice_thickness",
    "WindowCenter": "window_center",
    "WindowWidth": "window_width",
    "RescaleSlope": "rescale_slope",
    "RescaleIntercept": "rescale_intercept",
    "ImageOrientationPatient": "orientation",  # six direction cosines: the section's plane
}


def dicom_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None, list[str]]:
    """``(row, col)`` mm per pixel, the attribute it came from, and caveats.

    ``PixelSpacing`` is spacing in the patient; ``ImagerPixelSpacing`` (projection radiography)
    is at the detector, so lengths come out magnified. Invalid values (zero, negative, not two
    numbers) are reported and ignored rather than used: no spacing beats a wrong one.
    """
    notes: list[str] = []
    candidates: list[tuple[str, Any]] = [
        ("PixelSpacing", ds.get("PixelSpacing")),
        ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing")),
    ]
    shared = first_item(ds.get("SharedFunctionalGroupsSequence"))
    measures = first_item(shared.get("PixelMeasuresSequence")) if shared is not None else None
    if measures is not None:  # enhanced multi-frame objects keep it in the functional groups
        candidates.insert(1, ("PixelMeasuresSequence.PixelSpacing", measures.get("PixelSpacing")))
    for source, raw in candidates:
        if raw is None:
            continue
        pair = positive_pair(raw)
        if pair is None:
            notes.append(f"{source} {raw_preview(raw)} is not a valid spacing and was ignored")
            continue
        if source == "ImagerPixelSpacing":
            note = MAGNIFICATION_NOTE
            factor = as_float(ds.get("EstimatedRadiographicMagnificationFactor"))
            if factor and factor > 0:
                note += f" (the file estimates a magnification of {factor:.3g})"
            notes.append(note)
        return pair, source, notes
    if ds.get("SequenceOfUltrasoundRegions"):
        notes.append("ultrasound region calibration is not read; pixel spacing unknown")
    return None, None, notes


_AXES = ("sagittal", "coronal", "axial")
"""The plane whose normal runs along the patient's x (left), y (posterior), z (head)."""


def section_plane(orientation: object, within_degrees: float) -> str | None:
    """The plane ("axial", "coronal", "sagittal") of ImageOrientationPatient's cosines, or None.

    The section's normal is the cross product of its row and column directions; it is named
    for the patient axis it lies within ``within_degrees`` of. None when it is more oblique,
    or the six values are not two directions at right angles.
    """
    try:
        cosines = np.asarray(orientation, dtype=float).reshape(2, 3)
    except (TypeError, ValueError):
        return None
    lengths = np.linalg.norm(cosines, axis=1, keepdims=True)
    if not np.all(np.isfinite(cosines)) or np.any(lengths < 1e-6):
        return None
    row, col = cosines / lengths
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.9:  # rows and columns not near right angles
        return None
    along = np.abs(normal) / np.linalg.norm(normal)
    axis = int(np.argmax(along))
    return _AXES[axis] if along[axis] >= np.cos(np.radians(within_degrees)) else None


def dicom_meta(ds: Any, tsuid: Any) -> dict[str, Any]:
    """The whitelisted technical attributes, as lower-case snake_case keys.

    ``tsuid`` is the file meta's TransferSyntaxUID; its registered name (never a private UID)
    is kept as ``transfer_syntax``. Multi-valued numbers (two windows) stay lists. Without a
    BodyPartExamined, ``body_part`` is the region the descriptions name, and
    ``body_part_from`` the attribute it was read in.
    """
    meta: dict[str, Any] = {}
    for keyword, key in _META_CODE.items():
        value = cs_code(ds.get(keyword))
        if value is not None:
            meta[key] = value
    for keyword, key in _META_INT.items():
        number = as_int(ds.get(keyword))
        if number is not None:
            meta[key] = number
    for keyword, key in _META_FLOAT.items():
        numbers = as_floats(ds.get(keyword))
        if numbers:
            meta[key] = numbers[0] if len(numbers) == 1 else numbers
    if "orientation" not in meta:  # an enhanced multi-frame object keeps it per frame group
        shared = first_item(ds.get("SharedFunctionalGroupsSequence"))
        plane = first_item(shared.get("PlaneOrientationSequence")) if shared is not None else None
        cosines = as_floats(plane.get("ImageOrientationPatient")) if plane is not None else []
        if len(cosines) == 6:
            meta["orientation"] = cosines
    if "body_part" not in meta:  # many scanners leave it empty and name it in a description
        described = described_body_part(ds)
        if described is not None:
            meta["body_part"], meta["body_part_from"] = described
    if tsuid.is_transfer_syntax and tsuid.name != str(tsuid):  # a registered, public name
        meta["transfer_syntax"] = tsuid.name
    return meta


def dicom_units(ds: Any, meta: dict[str, Any]) -> str:
    """``"HU"`` for rescaled CT (modality CT with a RescaleIntercept), else ``"a.u."``."""
    return "HU" if meta.get("modality") == "CT" and "RescaleIntercept" in ds else "a.u."
