"""tools.ingest.dicom_meta: spacing from the right attribute or none, and no identifiers in meta."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.tools.ingest.helpers import ALLOWED_META, modified, sample
from tools.image import LoadedImage
from tools.ingest.dicom_meta import section_plane
from tools.ingest.loader import load_image
from tools.store import make_ref


# ---------------------------------------------------------------------------------------------
# Spacing: from the file's attribute, with its caveat, or unknown
# ---------------------------------------------------------------------------------------------
def test_chest_radiograph_zero_spacing_is_not_used(chest: LoadedImage) -> None:
    # RG1_UNCI stores PixelSpacing "0.000\0.000" and no ImagerPixelSpacing: no usable
    # spacing, so none is reported (and the reason is noted) rather than a made-up one.
    assert chest.spacing_mm is None and chest.spacing_source is None
    assert any("PixelSpacing" in n and "not a valid spacing" in n for n in chest.notes)


def test_imager_pixel_spacing_used_with_magnification_note(tmp_path: Path) -> None:
    path = modified("MR_small.dcm", tmp_path, PixelSpacing=None, ImagerPixelSpacing=[0.2, 0.3],
                    EstimatedRadiographicMagnificationFactor=1.1)
    img = load_image(path)
    assert img.spacing_mm == (0.2, 0.3) and img.spacing_source == "ImagerPixelSpacing"
    note = " ".join(img.notes)
    assert "detector" in note and "magnification" in note and "1.1" in note


# ---------------------------------------------------------------------------------------------
# Metadata: a whitelist of technical attributes
# ---------------------------------------------------------------------------------------------
def test_chest_radiograph_geometry_and_meta(chest: LoadedImage) -> None:
    ds = pydicom.dcmread(sample("RG1_UNCI.dcm"), stop_before_pixels=True)
    assert chest.pixels.shape == (ds.Rows, ds.Columns) == (1955, 1841)
    assert chest.display.shape == chest.pixels.shape and chest.display.dtype == np.uint8
    assert chest.source_format == "dicom"
    m = chest.meta
    assert (m["modality"], m["body_part"], m["view_position"]) == ("CR", "CHEST", "PA")
    assert m["photometric"] == "MONOCHROME1" and m["frames"] == 1 and m["units"] == "a.u."
    assert set(m) <= ALLOWED_META


PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-987654",
    "PatientBirthDate": "19700101",
    "OtherPatientIDs": "OPID-55555",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "Welby^Marcus",
    "AccessionNumber": "ACC-424242",
    "StudyDescription": "pain after fall, Jane Doe",
    "SeriesDescription": "Jane chest",
    "ImageComments": "call Mrs Doe on 555-0199",
    "StudyDate": "20240229",
    "StationName": "STATION-XJ9",
    "BodyPartExamined": "Doe^Jane",  # PHI in a code field: breaks the CS rules, so dropped
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_meta_holds_no_identifiers(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    uids = [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    path = tmp_path / "phi.dcm"
    ds.save_as(path)

    img = load_image(path)
    text = json.dumps(img.meta) + json.dumps(img.notes) + make_ref("img-0", img).model_dump_json()
    for needle in [*PHI.values(), *uids, "Doe", "Jane", "555-0199", "Elsewhere"]:
        assert needle not in text, needle
    assert "body_part" not in img.meta
    assert set(img.meta) <= ALLOWED_META
    assert img.meta["modality"] == "CT"  # the technical fields are still there


# ---------------------------------------------------------------------------------------------
# The section's plane, from ImageOrientationPatient
# ---------------------------------------------------------------------------------------------
def test_section_plane_from_the_direction_cosines(tmp_path: Path) -> None:
    assert section_plane([1, 0, 0, 0, 1, 0], 10) == "axial"
    assert section_plane([1, 0, 0, 0, 0, -1], 10) == "coronal"
    assert section_plane([0, 1, 0, 0, 0, -1], 10) == "sagittal"
    assert section_plane([2, 0, 0, 0, 0, -3], 10) == "coronal"  # unnormalised directions
    tilted = [1, 0, 0, 0, 0.9272, -0.3746]  # pydicom's J2K head CT: a 22-degree gantry tilt
    assert section_plane(tilted, 30) == "axial" and section_plane(tilted, 10) is None
    for bad in ([1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 0, 0], "axial", None,
                [1, 0, 0, 0, float("nan"), 0]):
        assert section_plane(bad, 30) is None, bad
    # the loader keeps the cosines, a technical field, for it
    img = load_image(modified("CT_small.dcm", tmp_path, ImageOrientationPatient=[1, 0, 0, 0, 0, -1]))
    assert img.meta["orientation"] == [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    assert section_plane(img.meta["orientation"], 10) == "coronal"
    assert set(img.meta) <= ALLOWED_META
    # an enhanced object keeps it in the shared functional groups
    plane, shared = Dataset(), Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    shared.PlaneOrientationSequence = Sequence([plane])
    img = load_image(modified("CT_small.dcm", tmp_path, ImageOrientationPatient=None,
                              SharedFunctionalGroupsSequence=Sequence([shared])))
    assert section_plane(img.meta["orientation"], 10) == "sagittal"
