"""tools.export.dicom_seg: masks as a DICOM Segmentation that highdicom and dciodvfy accept."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tools.export.dicom_seg import SegmentInput, build_segmentation, segment_property
from tools.ingest.deid import new_anonymizer, read_deidentified
from tools.ingest.pseudonym import SiteKey

CT = get_testdata_file("CT_small.dcm")


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error lines for ``path`` (Debian package ``dicom3tools``); skips without it."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def source():
    return read_deidentified(CT, new_anonymizer(key=SiteKey.from_text("s" * 64)))


def test_masks_round_trip_through_a_valid_segmentation(source, tmp_path):
    lung = np.zeros((source.Rows, source.Columns), bool)
    lung[10:40, 5:25] = True
    empty = np.zeros_like(lung)
    seg = build_segmentation(source, [SegmentInput("left lung", lung, "lite-medsam", "1.2"),
                                      SegmentInput("nodule", empty, "lungs-finder", "0.1")],
                             software_version="0.1.0")
    out = tmp_path / "seg.dcm"
    seg.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []
    back = hd.seg.segread(out)
    assert back.number_of_segments == 2
    first = back.get_segment_description(1)
    assert first.segment_label == "left lung"
    assert first.segmented_property_type.meaning == "Lung"
    assert first.algorithm_identification[0].AlgorithmName == "lite-medsam"
    assert back.get_segment_description(2).segmented_property_type.meaning == "Nodule"
    # the pixels, on the source's grid, referencing the (pseudonymous) source instance
    pixels = back.get_pixels_by_source_instance(
        [source.SOPInstanceUID], segment_numbers=[1, 2])
    assert pixels.shape == (1, source.Rows, source.Columns, 2)
    assert np.array_equal(pixels[0, ..., 0].astype(bool), lung) and not pixels[0, ..., 1].any()
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == source.PatientID and back.PatientName == source.PatientName


def test_bad_masks_are_refused(source):
    with pytest.raises(ValueError, match="no masks"):
        build_segmentation(source, [], software_version="0")
    wrong = SegmentInput("x", np.zeros((3, 3), bool), "m", "1")
    with pytest.raises(ValueError, match="source image"):
        build_segmentation(source, [wrong], software_version="0")


def test_segment_property_codes():
    assert segment_property("Right Lung")[1].meaning == "Lung"
    assert segment_property("suspicious mass")[0].meaning == "Morphologically Abnormal Structure"
    assert segment_property("thing")[1].meaning == "Tissue"
