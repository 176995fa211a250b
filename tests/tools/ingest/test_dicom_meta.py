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
    # the invalid BodyPartExamined is dropped; "Jane chest" gives a term of the closed
    # vocabulary, never its text
    assert (img.meta["body_part"], img.meta["body_part_from"]) == ("CHEST", "SeriesDescription")
    assert set(img.meta) <= ALLOWED_META
    assert img.meta["modality"] == "CT"  # the technical fields are still there


# ---------------------------------------------------------------------------------------------
# The body part a description names, when BodyPartExamined is empty
# ---------------------------------------------------------------------------------------------
def test_a_shoulder_mr_without_body_part_is_read_off_its_study_description() -> None:
    # pydicom's MR2 is a shoulder MR whose BodyPartExamined is empty: the organ head, which
    # knows head, chest and abdomen, read it as "head 0.99"
    ds = pydicom.dcmread(sample("MR2_UNCR.dcm"), stop_before_pixels=True)
    assert not ds.get("BodyPartExamined") and ds.StudyDescription == "SHOULDER"
    meta = load_image(sample("MR2_UNCR.dcm")).meta
    assert (meta["body_part"], meta["body_part_from"]) == ("SHOULDER", "StudyDescription")
    # a head CT whose only description is "5/5mm Plain" names nothing
    assert "body_part" not in load_image(sample("693_UNCR.dcm")).meta


@pytest.mark.parametrize(("descriptions", "expected"), [
    ({"StudyDescription": "CT HEAD W/O CONTRAST"}, ("HEAD", "StudyDescription")),
    ({"SeriesDescription": "Ax T2 brain", "ProtocolName": "t2_tse_tra"},
     ("HEAD", "SeriesDescription")),
    ({"StudyDescription": "abdomen^liver"}, ("ABDOMEN", "StudyDescription")),
    ({"StudyDescription": "CT ABD/PELVIS"}, ("ABDOMENPELVIS", "StudyDescription")),
    ({"StudyDescription": "CT CHEST ABDOMEN PELVIS"}, None),  # three regions: none of them
    ({"StudyDescription": "MR KNEE", "SeriesDescription": "sag PD shoulder"}, None),
    ({"StudyDescription": "Non-ossifying fibroma of distal tibia"}, None),  # a bone: no region
    ({"StudyDescription": "Headache"}, None),  # whole words only
    ({}, None),
])
def test_descriptions_give_one_region_or_none(descriptions, expected) -> None:
    from tools.ingest.described_part import described_body_part

    ds = Dataset()
    for keyword, value in descriptions.items():
        setattr(ds, keyword, value)
    assert described_body_part(ds) == expected


def test_body_part_examined_goes_before_a_description(tmp_path: Path) -> None:
    path = modified("RG1_UNCI.dcm", tmp_path, StudyDescription="KNEE")
    meta = load_image(path).meta
    assert meta["body_part"] == "CHEST" and "body_part_from" not in meta


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_where_both_are_given_in_pydicoms_files_the_description_agrees() -> None:
    """On the real files that carry both, the described region is the header's organ."""
    from pydicom.data import get_testdata_files

    from retrievers.header_labels import header_labels
    from tools.ingest.described_part import described_body_part

    checked = 0
    for path in get_testdata_files("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom ships deliberately broken files too
            continue
        part = str(ds.get("BodyPartExamined", "") or "").strip()
        described = described_body_part(ds)
        if part and described is not None:
            assert (header_labels({"body_part": described[0]})
                    == header_labels({"body_part": part})), path
            checked += 1
    assert checked >= 6  # the chest films, the abdominal MRs, the pancreas CT


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
