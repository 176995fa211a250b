"""The body part a DICOM file's descriptions name, when its BodyPartExamined is empty.

Many scanners leave BodyPartExamined empty and say what was imaged in the study or series
description ("SHOULDER", "CT HEAD W/O", "abdomen^liver"). Without it the library's organ head,
which knows head, chest and abdomen only, reads pydicom's shoulder MR as "head 0.99". The
descriptions are free text and may hold a name, so their text is never kept: each is split
into words, and only a term of the closed vocabulary below can come out (PS3.15's Clean
Descriptors option keeps descriptors after cleaning; this keeps less). A description naming
more than one region ("CT CHEST ABDOMEN PELVIS") gives nothing, as does one that names none.
"""

from __future__ import annotations

import re
from typing import Any

from tools.ingest.values import as_list

__all__ = ["DESCRIPTIONS", "described_body_part"]

DESCRIPTIONS = ("StudyDescription", "SeriesDescription", "ProtocolName",
                "RequestedProcedureDescription", "PerformedProcedureStepDescription")
"""The descriptor attributes read, in this order."""

_REGION_WORDS = {
    "HEAD": ("HEAD", "BRAIN", "SKULL", "CRANIUM", "CRANIAL", "CEREBRAL"),
    "NECK": ("NECK",),
    "CHEST": ("CHEST", "THORAX", "LUNG", "LUNGS"),
    "HEART": ("HEART", "CARDIAC"),
    "BREAST": ("BREAST", "MAMMO", "MAMMOGRAPHY"),
    "ABDOMEN": ("ABDOMEN", "ABDOMINAL", "ABD", "LIVER", "KIDNEY", "KIDNEYS", "RENAL",
                "PANCREAS"),
    "PELVIS": ("PELVIS", "PELVIC"),
    "SPINE": ("SPINE", "CSPINE", "TSPINE", "LSPINE", "LUMBAR"),
    "SHOULDER": ("SHOULDER",),
    "ELBOW": ("ELBOW",),
    "WRIST": ("WRIST",),
    "HAND": ("HAND",),
    "HIP": ("HIP",),
    "KNEE": ("KNEE",),
    "ANKLE": ("ANKLE",),
    "FOOT": ("FOOT",),
}
"""A region, as a BodyPartExamined defined term (PS3.16 CID 4031), and the words that name it
in a description. A bone's name ("tibia") is left out: it says less than a region."""
_WORD_REGION = {w: region for region, words in _REGION_WORDS.items() for w in words}
_WORD = re.compile(r"[A-Z]+")


def described_body_part(ds: Any) -> tuple[str, str] | None:
    """``(region, attribute)``: the one region the descriptions name, and where it was read.

    None when no description names a region, or they name more than one (an abdomen with its
    pelvis is ``ABDOMENPELVIS``, as in CID 4031).
    """
    found: dict[str, str] = {}
    for keyword in DESCRIPTIONS:
        words = _WORD.findall(" ".join(str(v) for v in as_list(ds.get(keyword))).upper())
        for region in filter(None, map(_WORD_REGION.get, words)):
            found.setdefault(region, keyword)
    if set(found) == {"ABDOMEN", "PELVIS"}:
        return "ABDOMENPELVIS", found["ABDOMEN"]
    if len(found) != 1:
        return None
    ((region, keyword),) = found.items()
    return region, keyword
