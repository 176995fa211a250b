"""agent.dicom_sr: the answer as a TID 1500 SR plus a SEG, checked by highdicom and dciodvfy."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from agent.answer import Answer, Claim
from agent.dicom_sr import DicomSource, build_results, write_results
from tests.tools.export.test_dicom_seg import dciodvfy_errors
from tools.evidence import Assertion, Evidence, Measurement
from tools.ingest.deid import new_anonymizer, read_deidentified
from tools.ingest.pseudonym import SiteKey, patient_key

CT = get_testdata_file("CT_small.dcm")
ORIGINAL = pydicom.dcmread(CT, stop_before_pixels=True)
KEY = SiteKey.from_text("site-secret-for-tests-" + "x" * 20)


def _texts(group, code: str) -> list[str]:
    """The TEXT values under ``group`` whose concept is DCM ``code``."""
    items = hd.sr.utils.find_content_items(
        group[0], name=pydicom.sr.coding.Code(code, "DCM", "x"), recursive=True)
    return [item.TextValue for item in items]


@pytest.fixture
def results():
    header = read_deidentified(CT, new_anonymizer(key=KEY))
    source = DicomSource(header, KEY.date_shift_days(patient_key(ORIGINAL)))
    mask = np.zeros((header.Rows, header.Columns), np.uint8)
    mask[20:40, 10:30] = 1
    sp = (0.66, 0.66)
    evidence = [
        Evidence(id="E1", tool="segment", summary="left lung in box [10, 20, 30, 40]",
                 image_id="img-aaaaaaaaaaaa", score=0.91, mask_keys=["m1"],
                 measurements=[Measurement(name="area", value=174.2, unit="mm2", spacing_mm=sp),
                               Measurement(name="long_axis", value=17.5, unit="mm",
                                           spacing_mm=sp)],
                 data={"label": "left lung", "model": "lite-medsam",
                       "spacing_source": "PixelSpacing"}),
        Evidence(id="E2", tool="classify", summary="nodule 0.80", image_id="img-aaaaaaaaaaaa",
                 score=0.8, assertions=[Assertion(finding="nodule", present=True)],
                 measurements=[Measurement(name="lesion_count", value=1, unit="lesions")],
                 data={"model": "open_clip:test"}),
        Evidence(id="E3", tool="segment", summary="failed", status="error"),
    ]
    answer = Answer(text="There is a nodule in the left lung.", confidence=0.72,
                    findings=[Claim(statement="left lung segmented", evidence_ids=["E1"]),
                              Claim(statement="a nodule is present", evidence_ids=["E2", "E3"])])
    return build_results(answer, evidence, {"img-aaaaaaaaaaaa": source}, {"m1": mask}.__getitem__,
                         planner="embedded"), header


def test_sr_and_seg_are_valid_and_say_what_the_answer_says(results, tmp_path):
    res, header = results
    sr_path, seg_path = write_results(res, tmp_path / "answer.dcm")
    assert seg_path.name == "answer-seg.dcm"
    assert dciodvfy_errors(sr_path) == [] and dciodvfy_errors(seg_path) == []
    assert res.notes == ["finding 2: evidence E3 is missing or failed; not reported"]

    sr = hd.sr.srread(sr_path)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    planar = sr.content.get_planar_roi_measurement_groups()
    image_level = sr.content.get_image_measurement_groups()
    assert len(planar) == 1 and len(image_level) == 2  # E1 on its mask; the answer and E2
    lung = planar[0]
    rows = {m.name.meaning: (m.value, m.unit.value) for m in lung.get_measurements()}
    assert rows == {"Area": (174.2, "mm2"), "long_axis": (17.5, "mm"),
                    "Tool quality score": (0.91, "1")}
    assert "left lung segmented" in lung.tracking_identifier
    assert _texts(lung, "111001") == ["lite-medsam"]  # Algorithm Name: the model
    params = _texts(lung, "111002")  # Algorithm Parameters
    assert "pixel spacing 0.66 x 0.66 mm from PixelSpacing" in params
    assert "tool segment" in params and any(p.startswith("evidence E1: left lung") for p in params)
    # the mask is referenced as segment 1 of the SEG written beside the SR
    seg = hd.seg.segread(seg_path)
    ref = lung.roi if lung.roi is not None else lung.referenced_segmentation_frame
    assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    answer_group, nodule = image_level
    assert answer_group.tracking_identifier == "Answer: There is a nodule in the left lung."
    assert [(m.name.meaning, m.value) for m in answer_group.get_measurements()] == [
        ("Probability", 0.72)]
    assert nodule.get_qualitative_evaluations()[0].value.meaning == "Present"
    assert {m.unit.value for m in nodule.get_measurements()} == {"{lesions}", "1"}
    assert nodule.source_images[0].referenced_sop_instance_uid == header.SOPInstanceUID


def test_only_pseudonymous_identifiers_are_written(results, tmp_path):
    res, header = results
    paths = write_results(res, tmp_path / "answer.dcm", tmp_path / "masks.dcm")
    assert [p.name for p in paths] == ["answer.dcm", "masks.dcm"]
    for path in paths:
        data = path.read_bytes()
        for phi in (str(ORIGINAL.PatientName), ORIGINAL.PatientID, ORIGINAL.StudyInstanceUID,
                    ORIGINAL.SOPInstanceUID, ORIGINAL.SeriesInstanceUID, ORIGINAL.StudyDate,
                    ORIGINAL.InstitutionName):
            assert phi.encode() not in data, (path.name, phi)
        ds = pydicom.dcmread(path)
        # the references are the pseudonyms the site can compute from its originals
        assert ds.StudyInstanceUID == KEY.uid(ORIGINAL.StudyInstanceUID) == header.StudyInstanceUID
        assert ds.PatientID == header.PatientID
        # the writer's own dates moved back by the patient's shift, like the study's
        shift = KEY.date_shift_days(patient_key(ORIGINAL))
        assert ds.ContentDate == (dt.date.today() - dt.timedelta(days=shift)).strftime("%Y%m%d")
    sr = pydicom.dcmread(paths[0])
    cited = {item.ReferencedSOPInstanceUID
             for study in sr.CurrentRequestedProcedureEvidenceSequence
             for series in study.ReferencedSeriesSequence
             for item in series.ReferencedSOPSequence}
    assert header.SOPInstanceUID in cited and KEY.uid(ORIGINAL.SOPInstanceUID) in cited


def test_an_sr_needs_a_dicom_source():
    with pytest.raises(ValueError, match="DICOM source"):
        build_results(Answer(text="x", confidence=0.5), [], {}, lambda k: np.zeros((1, 1)))
