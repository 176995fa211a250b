"""``medloop inspect``: the de-identified summary, and one line with exit code 2 on bad input."""

from __future__ import annotations

import json

from pydicom.data import get_testdata_file

RG1 = get_testdata_file("RG1_UNCI.dcm")


def test_inspect_prints_deidentified_summary(cli):
    code, out, err = cli("inspect", RG1, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["modality"] == "CR" and data["source_format"] == "dicom"
    assert data["shape"][0] > 1000 and data["id"].startswith("img-")
    import pydicom

    ds = pydicom.dcmread(RG1, stop_before_pixels=True)
    for phi in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if phi:
            assert phi not in out


def test_inspect_bad_input_exits_2_with_one_line(cli, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all")
    code, out, err = cli("inspect", str(bad), "--json")
    assert code == 2 and out == ""
    assert err.startswith("medloop: ") and err.count("\n") == 1 and "notes.txt" in err
