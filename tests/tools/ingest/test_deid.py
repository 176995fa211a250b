"""tools.ingest.deid: a real CT file filled with PHI everywhere, de-identified, then searched byte by byte."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tools.errors import IngestError, NotAnImageError
from tools.ingest.deid import deidentify_file, deidentify_tree, new_anonymizer

# Every string a careless de-identifier could leave behind; each must vanish from the bytes.
PHI = {
    "PatientName": "Fakerson^Jonathan",
    "PatientID": "MRN8675309",
    "PatientBirthDate": "19610704",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "Quackenbush^Hortense",
    "AccessionNumber": "ACC5551212",
    "StudyDate": "20190312",
    "SeriesDate": "20190312",
    "StudyDescription": "CT chest for Jonathan Fakerson",
    "PatientComments": "lives at 12 Privet Drive",
    "OperatorsName": "Techman^Tabitha",
    "OtherPatientIDs": "OTHERID4242",
}
NESTED_NAME, NESTED_ID = "Nestedname^Nellie", "REQ7777777"
REF_NAME = "Reffy^Roberta"
PRIVATE_PHI = "PRIVATE-PHI-Smithson-123-45-6789"
STUDY_UID = "1.2.826.0.1.3680043.8.498.11111111111111111111"
# The sample file's own identifying strings (name, id, institution, station, UIDs) too.
_sample = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
SAMPLE_PHI = [str(v) for v in (_sample.PatientName, _sample.PatientID, _sample.StationName,
                                _sample.InstitutionName, _sample.SeriesInstanceUID,
                                _sample.FrameOfReferenceUID) if v]


def _phi_file(path: Path, sop_uid: str) -> Dataset:
    """CT_small with PHI in ordinary tags, two nested sequences and a private block."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = STUDY_UID
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    req = Dataset()
    req.RequestedProcedureID = NESTED_ID
    req.ScheduledPerformingPhysicianName = NESTED_NAME
    ds.RequestAttributesSequence = [req]
    ref = Dataset()  # a sequence the profile keeps: dicognito must walk into it
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = STUDY_UID
    ref.PerformingPhysicianName = REF_NAME
    ref.PatientID = PHI["PatientID"]
    ds.ReferencedStudySequence = [ref]
    block = ds.private_block(0x0099, "MEDLOOP TEST", create=True)
    block.add_new(0x01, "LO", PRIVATE_PHI)
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "in" / "a.dcm", tmp_path / "in" / "b.dcm"
    a.parent.mkdir()
    _phi_file(a, "1.2.826.0.1.3680043.8.498.22222222222222222221")
    _phi_file(b, "1.2.826.0.1.3680043.8.498.22222222222222222222")
    return a, b


def _leftovers(data: bytes) -> list[str]:
    strings = [*PHI.values(), NESTED_NAME, NESTED_ID, REF_NAME, PRIVATE_PHI, STUDY_UID,
               "Fakerson", "Jonathan", "Elsewhere", "Privet", "MRN8675309",
               *SAMPLE_PHI]
    return [s for s in strings if s.encode() in data]


def test_no_phi_left_in_output_bytes(study: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = study
    assert _leftovers(a.read_bytes()), "the fixture must contain the PHI it tests for"
    out = tmp_path / "out" / "a.dcm"
    report = deidentify_file(a, out)
    assert _leftovers(out.read_bytes()) == []
    assert report.source == "a.dcm" and report.output == "a.dcm"
    assert report.uids_remapped
    assert report.private_removed >= 1
    assert report.removed >= 3  # StudyDescription, PatientComments, RequestAttributesSequence
    assert report.changed >= len(PHI) - 3
    d = report.as_dict()
    assert d["source"] == "a.dcm" and str(tmp_path) not in str(d)


def test_what_is_kept_and_recorded(study: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = study
    src = pydicom.dcmread(a)
    out = tmp_path / "a-deid.dcm"
    deidentify_file(a, out)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == src.SOPClassUID
    assert ds.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert ds.PixelData == src.PixelData
    assert ds.PatientIdentityRemoved == "YES"
    assert any("dicognito" in v for v in ds.DeidentificationMethod)
    assert all(len(v) <= 64 for v in ds.DeidentificationMethod)  # LO
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100"}
    assert not any(e.tag.is_private for e in ds.iterall())
    assert "DataSetTrailingPadding" not in ds
    assert "StudyDescription" not in ds and "RequestAttributesSequence" not in ds
    # nested sequence kept, its identifiers replaced
    ref = ds.ReferencedStudySequence[0]
    assert str(ref.PerformingPhysicianName) != REF_NAME and ref.PatientID != PHI["PatientID"]
    # a replaced patient id is consistent between the top level and the nested item
    assert ref.PatientID == ds.PatientID
    # dates shifted, not blanked: the image stays usable
    assert ds.StudyDate and ds.StudyDate != PHI["StudyDate"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_consistent_within_a_study(study: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = study
    anon = new_anonymizer()
    deidentify_file(a, tmp_path / "o" / "a.dcm", anon)
    deidentify_file(b, tmp_path / "o" / "b.dcm", anon)
    da, db = (pydicom.dcmread(tmp_path / "o" / n) for n in ("a.dcm", "b.dcm"))
    assert da.StudyInstanceUID == db.StudyInstanceUID != STUDY_UID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert da.SOPInstanceUID != "1.2.826.0.1.3680043.8.498.22222222222222222221"
    assert da.PatientID == db.PatientID and da.PatientName == db.PatientName
    # a fresh anonymizer (a new run) gives an unlinkable mapping
    deidentify_file(a, tmp_path / "o2" / "a.dcm")
    assert pydicom.dcmread(tmp_path / "o2" / "a.dcm").StudyInstanceUID != da.StudyInstanceUID


def test_not_dicom_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.dcm"
    bogus.write_bytes(b"Patient Fakerson, MRN8675309\n" * 20)
    with pytest.raises(NotAnImageError, match=r"notes\.dcm"):
        deidentify_file(bogus, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    broken = tmp_path / "broken.dcm"  # a DICM prefix, then a file meta with no SOP UIDs
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff")
    with pytest.raises(IngestError, match=r"broken\.dcm"):
        deidentify_file(broken, tmp_path / "out.dcm")
    assert list(tmp_path.glob("out.dcm*")) == []


def test_burned_in_annotation_keeps_identity_flag_no(tmp_path: Path) -> None:
    src = tmp_path / "us.dcm"
    ds = pydicom.dcmread(get_testdata_file("US1_UNCI.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(src, enforce_file_format=True)
    report = deidentify_file(src, tmp_path / "us-out.dcm")
    out = pydicom.dcmread(tmp_path / "us-out.dcm")
    assert out.PatientIdentityRemoved == "NO"
    assert any(w.startswith("BurnedInAnnotation=YES") for w in report.warnings)
    assert out.PixelData == ds.PixelData


def test_unstated_burned_in_on_ultrasound_warns(tmp_path: Path) -> None:
    report = deidentify_file(get_testdata_file("US1_UNCI.dcm"), tmp_path / "us-out.dcm")
    assert any("BurnedInAnnotation not stated" in w for w in report.warnings)


def test_tree_mirrors_layout_and_skips_non_dicom(study: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = study
    sub = a.parent / "series2"
    sub.mkdir()
    b.rename(sub / "b.dcm")
    (a.parent / "readme.txt").write_text("Jonathan Fakerson's scans")
    (a.parent / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff")
    out = tmp_path / "tree-out"
    reports = deidentify_tree(a.parent, out)
    by_name = {r.source: r for r in reports}
    assert set(by_name) == {"a.dcm", "b.dcm", "readme.txt", "broken.dcm"}
    assert by_name["readme.txt"].skipped and not (out / "readme.txt").exists()
    assert by_name["broken.dcm"].skipped and not (out / "broken.dcm").exists()
    assert not by_name["a.dcm"].skipped and not by_name["b.dcm"].skipped
    assert (out / "a.dcm").is_file() and (out / "series2" / "b.dcm").is_file()
    da, db = pydicom.dcmread(out / "a.dcm"), pydicom.dcmread(out / "series2" / "b.dcm")
    assert da.StudyInstanceUID == db.StudyInstanceUID != STUDY_UID
    for f in (out / "a.dcm", out / "series2" / "b.dcm"):
        assert _leftovers(f.read_bytes()) == []


def test_overlays_removed_pixels_kept(tmp_path: Path) -> None:
    src = get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    before = pydicom.dcmread(src)
    assert 0x60003000 in before  # the sample carries overlay data
    report = deidentify_file(src, tmp_path / "mr.dcm")
    out = pydicom.dcmread(tmp_path / "mr.dcm")
    assert not any(0x6000 <= e.tag.group <= 0x601E for e in out)
    assert out.PixelData == before.PixelData
    assert report.removed >= 2
