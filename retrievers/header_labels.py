"""What an image's DICOM header says of its modality, body part and plane, as the heads' classes.

The library's trained heads (``retrievers.heads``) were fitted on its JPEGs; a DICOM image
says what it is in its header, and that goes before any head's reading (``heads.read_labels``):
on pydicom's test files the heads alone read five of six images wrongly (a chest CT as an
X-ray, an abdominal MR as a CT, an ultrasound as a film). The plane comes from the section's
direction cosines (ImageOrientationPatient) for a CT or MR, and from the ViewPosition for a
film: the plane head knows axial and frontal only, and would call a coronal CT axial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from tools.ingest.dicom_meta import section_plane

__all__ = ["header_labels", "unknown_to_heads"]


class _Classes(Protocol):
    """A trained head, as far as this module needs it (``retrievers.heads.Head``)."""

    @property
    def classes(self) -> Sequence[str]: ...


_HEADER_MODALITY = {"CT": "ct", "MR": "mr", "CR": "xray", "DX": "xray", "RG": "xray",
                    "PX": "xray", "MG": "mg", "US": "us", "NM": "nm", "PT": "pt", "XA": "xa",
                    "OT": ""}
"""A DICOM Modality code -> the modality head's class (others: a class no head here has;
"OT", other, says nothing)."""
_HEADER_ORGAN = {"chest": ("CHEST", "THORAX", "LUNG", "HEART", "RIB"),
                 "head": ("HEAD", "BRAIN", "SKULL"),
                 "abd": ("ABDOMEN", "ABD", "ABDOMENPELVIS", "LIVER", "KIDNEY", "PANCREAS")}

_VIEW_PLANE = {"PA": "frontal", "AP": "frontal", "LL": "lateral", "RL": "lateral",
               "LAT": "lateral", "LATERAL": "lateral"}
"""A film's ViewPosition -> its plane (decubitus and oblique views are left unread)."""
_AXES = ("axial", "coronal", "sagittal")
_WITHIN_DEGREES = 30.0
"""How near a patient axis a section's normal must lie to be named for it: a head CT's
gantry tilt (22 degrees on pydicom's J2K sample) is still axial; a more oblique section is
left unread."""


def _section(meta: Mapping[str, object]) -> str | None:
    """A CT or MR image's plane: one cut from a volume, the volume's stack, or its cosines."""
    cut, stack = meta.get("plane"), meta.get("slice_orientation")
    if cut in _AXES:  # a plane reformatted from a volume (tools.planes) keeps the volume's
        return str(cut)  # cosines, which are the stack's, not its own
    if stack in _AXES and cut in (None, "slice"):
        return str(stack)
    return section_plane(meta.get("orientation"), _WITHIN_DEGREES)


def header_labels(meta: Mapping[str, object]) -> dict[str, str]:
    """What an image's DICOM header says of its modality, organ and plane, as the heads' classes.

    From the ingested image's ``meta`` (``modality``, ``body_part``, ``orientation`` for a
    section, ``view_position`` for a film); a value none of the heads' classes covers is kept
    as it is ("us", "knee", "coronal"): the heads know nothing of such images. Empty for an
    image without a header (a JPEG's modality is "unknown").
    """
    out: dict[str, str] = {}
    code = str(meta.get("modality") or "").upper()
    said = _HEADER_MODALITY.get(code, "" if code in ("", "UNKNOWN") else code.lower())
    if said:
        out["modality"] = said
    part = str(meta.get("body_part") or "").upper().replace(" ", "")
    if part:
        out["organ"] = next((o for o, parts in _HEADER_ORGAN.items() if part in parts),
                            part.lower())
    if out.get("modality") in ("ct", "mr"):
        plane = _section(meta)
        if plane:
            out["plane"] = plane
    elif out.get("modality") == "xray":
        view = _VIEW_PLANE.get(str(meta.get("view_position") or "").upper())
        if view:
            out["plane"] = view
    return out


def unknown_to_heads(heads: Mapping[str, _Classes], header: Mapping[str, str] | None) -> str:
    """What the header says that no head has a class for ("modality us"), else "".

    Named in a description, so that what it leaves out says why: an ultrasound is not an
    image the library's classifiers were fitted on.
    """
    return "; ".join(f"{t} {v} (its classifier knows {', '.join(heads[t].classes)})"
                     for t, v in (header or {}).items()
                     if t in heads and v not in heads[t].classes)
