"""``medloop ask --study UID`` against a real Orthanc, and ``--sr --seg --stow`` back into it.

The planner is the scripted OpenAI-compatible server (``tests.openai_server``): it calls
``describe_image`` and ``measure`` (on a mask put in the store beforehand, as an earlier turn's
segmentation would have) on the study's CT, then answers citing both. The SR and SEG the run
stores on the PACS are fetched back over DICOMweb and read with highdicom: their measurement
values and units, the pseudonymous UIDs they reference, and no identifying string anywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from agent.cli.main import main
from tests.orthanc import (
    CT_STUDY,
    HOSTILE_STUDY,
    free_port,
    needs_orthanc,
    orthanc,  # noqa: F401 - the module's server fixture
)
from tools.ingest.loader import load_image
from tools.ingest.pseudonym import SECRET_FILE, SiteKey
from tools.pacs.config import PacsConfig
from tools.pacs.fetch import fetched_study, find_studies
from tools.store import ImageStore

CT = get_testdata_file("CT_small.dcm")
MASK_KEY = "mask-0123456789ab"
SPACING = 0.661468  # CT_small's PixelSpacing, both ways
# What identifies the patient or the original study in CT_small.dcm.
PHI = ["CompressedSamples", "1CT1", "JFK IMAGING", "CT01_OC0", "20040119", CT_STUDY]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pacs_env(orthanc, monkeypatch):  # noqa: F811
    """Credentials from the environment (never the command line), as a site would set them."""
    monkeypatch.setenv("MEDLOOP_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDLOOP_PACS_PASSWORD", orthanc.password)
    return orthanc


def script_measurement(server, medloop_home):
    """A mask on the CT in the store, and the planner's calls: describe, measure, answer.

    E1 is ``case_answer``'s, asked before the planner's first call.
    """
    image_id = load_image(CT).content_id()
    mask = np.zeros((128, 128), np.uint8)
    mask[40:60, 50:80] = 1  # 600 px
    ImageStore(medloop_home / "store").put_array(mask, key=MASK_KEY)
    server.reply_calls(("describe_image", {"image_id": image_id}))
    server.reply_calls(("measure", {"image_id": image_id, "mask_key": MASK_KEY}))
    server.reply_calls(("final_answer", {
        "answer": "A CT slice; the outlined region measures about 263 mm2.",
        "claims": [{"statement": "the image is a CT slice", "evidence_ids": ["E2"]},
                   {"statement": "the region is about 263 mm2", "evidence_ids": ["E3"]}],
        "confidence": 0.8}))
    return mask


@needs_orthanc
def test_ask_a_study_from_the_pacs_and_store_the_report_back(
        capsys, server, pacs_env, medloop_home, tmp_path):
    mask = script_measurement(server, medloop_home)
    out = tmp_path / "answer.dcm"
    code, stdout, err = run_cli(
        capsys, "ask", "--pacs", pacs_env.dicomweb_url, "--study", CT_STUDY,
        "How large is the outlined region?", "--json", "--sr", str(out), "--seg",
        str(tmp_path / "masks.dcm"), "--stow", "--llm", f"openai:test@{server.url}")
    assert code == 0, err
    assert "[medloop] fetched 1 instance(s)" in err and "act    measure → ok" in err
    data = json.loads(stdout)
    assert data["pacs_study"]["instances"] == 1 and data["pacs_study"]["skipped"] == []
    assert data["dicom"]["written"] == [str(out), str(tmp_path / "masks.dcm")]
    assert len(data["dicom"]["stored"]) == 2
    # The PACS's own password never reaches the output or the planner.
    assert pacs_env.password not in stdout + err + json.dumps(server.requests)

    key = SiteKey.load_or_create(medloop_home / SECRET_FILE)
    original = pydicom.dcmread(CT, stop_before_pixels=True)
    pseudo_study = key.uid(CT_STUDY)
    web = PacsConfig(url=pacs_env.dicomweb_url, user=pacs_env.user, password=pacs_env.password)
    with fetched_study(web, pseudo_study) as back:  # read them back from the PACS
        files = {pydicom.dcmread(p).Modality: p for p in back.inputs}
        raw = {m: p.read_bytes() for m, p in files.items()}
        sr_ds, seg_ds = pydicom.dcmread(files["SR"]), pydicom.dcmread(files["SEG"])
        check_report(files["SR"], key, original, mask)
    assert sorted([str(sr_ds.SOPInstanceUID), str(seg_ds.SOPInstanceUID)]) == \
        sorted(data["dicom"]["stored"])
    # The SEG sits on the CT's pseudonymous instance, and holds the mask.
    ref = seg_ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == key.uid(original.SOPInstanceUID)
    assert seg_ds.StudyInstanceUID == pseudo_study != CT_STUDY
    assert int(seg_ds.pixel_array.sum()) == int(mask.sum())
    for modality, content in raw.items():
        for phi in PHI:
            assert phi.encode() not in content, f"{phi} in the {modality} stored on the PACS"


def check_report(path, key, original, mask):
    """The SR says what the run measured, in UCUM units, about the pseudonymous CT."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert groups[0].tracking_identifier.startswith("Answer: A CT slice")
    # E3 drew on a mask, so its group is a planar ROI group pointing at the SEG's segment
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == 1 and planar[0].referenced_segmentation_frame is not None
    by_finding = {g.tracking_identifier.split(" (")[1].split(")")[0]: g
                  for g in [*groups[1:], *planar]}
    spacing = {m.name.meaning: (m.value, m.unit.value)
               for m in by_finding["E2"].get_measurements()}
    assert spacing["row_spacing"] == (pytest.approx(SPACING), "mm")
    measured = {m.name.meaning: (m.value, m.unit.value)
                for m in by_finding["E3"].get_measurements()}
    area, unit = measured["Area"]
    assert unit == "mm2" and area == pytest.approx(mask.sum() * SPACING ** 2, rel=1e-4)
    assert measured["long_axis"][1] == "mm"
    sources = {str(item.ReferencedSOPInstanceUID)
               for item in pydicom.dcmread(path).CurrentRequestedProcedureEvidenceSequence[0]
               .ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert key.uid(original.SOPInstanceUID) in sources


@needs_orthanc
def test_ask_over_dimse_and_store_with_c_store(capsys, server, orthanc, medloop_home,  # noqa: F811
                                               tmp_path):
    script_measurement(server, medloop_home)
    out = tmp_path / "answer.dcm"
    code, stdout, err = run_cli(
        capsys, "ask", "--pacs", orthanc.dimse_url, "--study", CT_STUDY, "How large?",
        "--json", "--sr", str(out), "--stow", "--llm", f"openai:test@{server.url}")
    assert code == 0, err
    data = json.loads(stdout)
    assert len(data["dicom"]["stored"]) == 2  # SR and SEG, by C-STORE
    key = SiteKey.load_or_create(medloop_home / SECRET_FILE)
    web = PacsConfig(url=orthanc.dicomweb_url, user=orthanc.user, password=orthanc.password)
    with fetched_study(web, key.uid(CT_STUDY)) as back:
        stored = {str(pydicom.dcmread(p).SOPInstanceUID) for p in back.inputs}
    assert set(data["dicom"]["stored"]) <= stored


@needs_orthanc
def test_pacs_find_lists_studies_without_patients(capsys, pacs_env):
    code, out, err = run_cli(capsys, "pacs", "find", "--pacs", pacs_env.dicomweb_url, "--json")
    assert code == 0, err
    rows = {r["study_uid"]: r for r in json.loads(out)}
    assert rows[CT_STUDY]["modalities"] == ["CT"] and rows[CT_STUDY]["instances"] == 1
    assert "CompressedSamples" not in out and "1CT1" not in out
    code, out, _ = run_cli(capsys, "pacs", "find", "--pacs", pacs_env.dimse_url, "--modality",
                           "CT", "--date", "20040119")
    lines = out.splitlines()
    assert code == 0 and any(line.startswith(f"{CT_STUDY}  2004-01-19  CT ") for line in lines)
    assert all(" CT " in line for line in lines)  # the reports stored back are not CT


@needs_orthanc
def test_a_study_of_hostile_files_only_stops_with_the_guards_reason(capsys, server, pacs_env):
    code, _, err = run_cli(capsys, "ask", "--pacs", pacs_env.dicomweb_url, "--study",
                           HOSTILE_STUDY, "q", "--llm", f"openai:test@{server.url}")
    assert code == 2
    assert "no usable image in the study" in err and "Windows PE executable header" in err
    assert server.requests == []  # the planner never ran


@pytest.mark.parametrize("argv,code,needle", [
    (["--study", CT_STUDY, "q"], 2, "no PACS configured"),
    (["--pacs", "http://127.0.0.1:9/dicom-web", "--study", "1.2.x", "q"], 2, "digits and dots"),
    (["--pacs", "ftp://h", "--study", CT_STUDY, "q"], 2, "must start with http://"),
    (["--pacs", "http://u:p@h/dicom-web", "--study", CT_STUDY, "q"], 2, "not in the URL"),
    ([CT, "q", "--stow"], 2, "--stow needs --sr"),
    (["q"], 2, "at least one IMAGE (or --study UID)"),
])
def test_bad_pacs_options_are_named(capsys, argv, code, needle, monkeypatch):
    monkeypatch.delenv("MEDLOOP_PACS_URL", raising=False)
    got, _, err = run_cli(capsys, "ask", *argv, "--llm", "openai:m@http://127.0.0.1:9/v1")
    assert got == code and needle in err, err


def test_a_pacs_that_is_down_is_one_clear_line(capsys):
    port = free_port()
    code, _, err = run_cli(capsys, "ask", "--pacs", f"http://127.0.0.1:{port}/dicom-web",
                           "--study", CT_STUDY, "q", "--llm", "openai:m@http://127.0.0.1:9/v1")
    assert code == 1
    assert err.strip() == (f"medloop: cannot reach the PACS at 127.0.0.1:{port}: connection "
                           "refused (is it running, and is the port right?)")


def test_find_needs_a_pacs(capsys, monkeypatch):
    monkeypatch.delenv("MEDLOOP_PACS_URL", raising=False)
    code, _, err = run_cli(capsys, "pacs", "find")
    assert code == 2 and "no PACS configured" in err


@needs_orthanc
def test_the_study_uid_names_the_right_study(pacs_env):
    # the CLI picked CT_STUDY itself, not merely "a study": the listing agrees on what it is
    web = PacsConfig(url=pacs_env.dicomweb_url, user=pacs_env.user, password=pacs_env.password)
    (study,) = find_studies(web, {"StudyInstanceUID": CT_STUDY})
    assert study.modalities == ("CT",)


def test_a_failed_store_keeps_the_answer_and_the_files(capsys, server, tmp_path):
    server.reply_calls(("describe_image", {"image_id": load_image(CT).content_id()}))
    server.reply_calls(("final_answer", {"answer": "A CT image.", "claims": [
        {"statement": "a CT slice", "evidence_ids": ["E2"]}], "confidence": 0.8}))
    port = free_port()
    out = tmp_path / "answer.dcm"
    code, stdout, err = run_cli(capsys, "ask", CT, "What is this?", "--json", "--sr", str(out),
                                "--stow", "--pacs", f"http://127.0.0.1:{port}/dicom-web",
                                "--llm", f"openai:test@{server.url}")
    assert code == 1 and out.is_file()
    data = json.loads(stdout)
    assert data["answer"] == "A CT image." and "stored" not in data["dicom"]
    assert "connection refused" in data["dicom"]["stow_error"]
    assert "medloop: not stored on the PACS: cannot reach the PACS" in err
