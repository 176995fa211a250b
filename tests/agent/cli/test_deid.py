"""``medloop deid``: a folder de-identified, non-DICOM files skipped, OUT never inside IN."""

from __future__ import annotations

import json

from pydicom.data import get_testdata_file


def test_deid_cli_on_a_folder(cli, tmp_path):
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "a.dcm")
    (src / "notes.txt").write_text("not dicom")
    code, out, err = cli("deid", str(src), str(tmp_path / "out"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["files"] == 1 and data["skipped"] == ["notes.txt"]
    assert (tmp_path / "out" / "a.dcm").exists()
    import pydicom

    assert pydicom.dcmread(tmp_path / "out" / "a.dcm").PatientIdentityRemoved == "YES"
    code, _, err = cli("deid", str(src), str(src / "inside"))
    assert code == 2 and "must not lie inside" in err


def test_deid_cli_for_people_and_an_existing_file(cli, tmp_path):
    import shutil

    src = tmp_path / "a.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), src)
    out = tmp_path / "out.dcm"
    code, text, err = cli("deid", str(src), str(out))
    assert code == 0, err
    assert "1 file(s) de-identified, 0 skipped" in text and "burned-in text" in text
    code, _, err = cli("deid", str(src), str(out))
    assert code == 2 and "already exists (use --overwrite)" in err
    assert cli("deid", str(src), str(out), "--overwrite")[0] == 0
    code, _, err = cli("deid", str(tmp_path / "missing.dcm"), str(out))
    assert code == 2 and "missing.dcm: not found" in err


def test_deid_cli_pseudonyms_are_keyed_by_the_site_secret(cli, tmp_path, monkeypatch):
    import pydicom

    src = get_testdata_file("CT_small.dcm")

    def run(name, *extra):
        out = tmp_path / name
        code, _, err = cli("deid", src, str(out), *extra)
        assert code == 0, err
        ds = pydicom.dcmread(out)
        return ds.StudyInstanceUID, ds.PatientID, ds.StudyDate

    first, again = run("a.dcm"), run("b.dcm")
    assert first == again  # the home's secret: same study, same pseudonyms and date shift
    assert run("r.dcm", "--random")[0] != first[0]
    monkeypatch.setenv("MEDLOOP_DEID_SECRET", "another site's secret, long enough to key it!")
    assert run("other.dcm")[0] != first[0]  # another site's secret: unrelated mapping
