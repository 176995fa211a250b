"""Masks as a DICOM Segmentation object (highdicom), on the grid of their source image.

A Segmentation is how a viewer (OHIF, 3D Slicer, Orthanc's) overlays a machine's masks on the
image they came from: each mask becomes one *segment* (a label, what it is as a SNOMED CT
code, the algorithm that drew it) of a BINARY segmentation whose frames reference the source
image by its SOP Instance UID. The source is passed as a pydicom header (no pixels needed): the
de-identified one (``tools.ingest.deid.read_deidentified``), so patient and study come out as
the site's pseudonyms, never the originals.

Only single-frame 2D sources are written here: a mask on a plane cut from a volume (a series,
a NIfTI file) is not on one source instance's grid, and the caller reports it as skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SEG_SERIES_NUMBER", "SegmentInput", "build_segmentation", "segment_property"]

SEG_SERIES_NUMBER = 9901  # high, so derived series sort after the acquired ones
_MANUFACTURER = "medloop"

# What a mask label says it is, as (category, type) SNOMED CT codes (DICOM CID 7150 / 7151);
# labels not listed are "Tissue" (the least committal type a viewer accepts).
_PROPERTIES = {
    "lung": ("AnatomicalStructure", "Lung"),
    "heart": ("AnatomicalStructure", "Heart"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "nodule": ("MorphologicallyAbnormalStructure", "Nodule"),
    "mass": ("MorphologicallyAbnormalStructure", "Mass"),
}


@dataclass(frozen=True)
class SegmentInput:
    """One mask to write as a segment.

    Attributes:
        label: what was segmented, in words (``"left lung"``); at most 64 characters are kept.
        mask: boolean ``(rows, columns)`` array on the source image's pixel grid.
        algorithm: the model that drew it (``lite-medsam``), recorded as the algorithm name.
        version: that algorithm's version (medloop's version when the model has none).
        tracking_uid: a UID the SR uses to point at this segment, or None for a new one.
    """

    label: str
    mask: np.ndarray
    algorithm: str
    version: str
    tracking_uid: str | None = None


def segment_property(label: str) -> tuple[Any, Any]:
    """The (category, type) codes for a mask labelled ``label`` (see ``_PROPERTIES``)."""
    from pydicom.sr.codedict import codes

    words = label.lower()
    for word, (category, kind) in _PROPERTIES.items():
        if word in words:
            return getattr(codes.SCT, category), getattr(codes.SCT, kind)
    return codes.SCT.Tissue, codes.SCT.Tissue


def build_segmentation(
    source: Any, segments: Sequence[SegmentInput], *, software_version: str,
    series_number: int = SEG_SERIES_NUMBER,
) -> Any:
    """A highdicom ``Segmentation`` of ``segments`` over the single-frame image ``source``.

    Raises:
        ValueError: no segments, a multi-frame source, or a mask not of the source's
            ``(Rows, Columns)`` shape.
    """
    import highdicom as hd

    if not segments:
        raise ValueError("no masks to write")
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError("the source image is multi-frame; only single-frame sources are written")
    shape = (int(source.Rows), int(source.Columns))
    for s in segments:
        if s.mask.shape != shape:
            raise ValueError(f"mask {s.label!r} is {s.mask.shape}, the source image {shape}")
    descriptions = []
    for number, s in enumerate(segments, start=1):
        category, kind = segment_property(s.label)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=(s.label or "object")[:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=(s.algorithm or "medloop")[:64],
                family=_ai_family(),
                version=(s.version or "unknown")[:64],
            ),
            tracking_uid=s.tracking_uid or hd.UID(),
            tracking_id=(s.label or "object")[:64],
        ))
    # (frames, rows, columns, segments): one frame, one channel per segment
    stack = np.stack([s.mask.astype(bool) for s in segments], axis=-1)[None]
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name="medloop",
        software_versions=software_version,
        device_serial_number="0",  # required (type 1); medloop is software, not a device
        series_description="medloop masks (not for diagnosis)",
        omit_empty_frames=False,  # an empty mask is a result too ("nothing there")
    )


def _ai_family() -> Any:
    """The algorithm family code: artificial intelligence (DCM 123110)."""
    from pydicom.sr.codedict import codes

    return codes.DCM.ArtificialIntelligence
