"""tools.ingest.pseudonym: keyed pseudonyms, the same across processes, unrelated across sites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.tools.ingest.test_deid import PHI, STUDY_UID, _leftovers, _phi_file
from tools.ingest.deid import deidentify_file, new_anonymizer, read_deidentified
from tools.ingest.pseudonym import SECRET_FILE, KeyedAnonymizer, SiteKey, patient_key

ROOT = Path(__file__).resolve().parents[3]
SOP_A = "1.2.826.0.1.3680043.8.498.22222222222222222221"
SOP_B = "1.2.826.0.1.3680043.8.498.22222222222222222222"

# One process: load (or create) the site secret under a home, de-identify one file, print what
# the output says. What `medloop deid` / an upload does in its own process.
_CHILD = """
import json, sys
import pydicom
from tools.ingest.deid import deidentify_file, new_anonymizer
from tools.ingest.pseudonym import SiteKey
secret, src, out = sys.argv[1:4]
deidentify_file(src, out, new_anonymizer(key=SiteKey.load_or_create(secret)))
ds = pydicom.dcmread(out)
print(json.dumps({k: str(ds.get(k, "")) for k in (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber")}))
"""


def _in_child(secret: Path, src: Path, out: Path) -> dict[str, str]:
    """De-identify ``src`` in a fresh Python process; the output's identifying values."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(secret), str(src), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path]:
    """Two files of one study (one patient), as the deid tests build them."""
    a, b = tmp_path / "in" / "a.dcm", tmp_path / "in" / "b.dcm"
    a.parent.mkdir()
    _phi_file(a, SOP_A)
    _phi_file(b, SOP_B)
    return a, b


def test_one_study_in_two_processes_maps_to_one_pseudonymous_study(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = study
    secret = tmp_path / "home" / SECRET_FILE
    da = _in_child(secret, a, tmp_path / "up1" / "a.dcm")  # creates the secret
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    db = _in_child(secret, b, tmp_path / "up2" / "b.dcm")  # a later upload, another process
    for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID",
              "PatientName", "StudyDate", "StudyTime", "AccessionNumber"):
        assert da[k] == db[k], k
    assert da["StudyInstanceUID"] != STUDY_UID and da["SOPInstanceUID"] != db["SOPInstanceUID"]
    assert da["PatientID"] != PHI["PatientID"] and da["StudyDate"] != PHI["StudyDate"]
    # the same file again, a third process: byte for byte the same output
    again = _in_child(secret, a, tmp_path / "up3" / "a.dcm")
    assert again == da
    assert (tmp_path / "up3" / "a.dcm").read_bytes() == (tmp_path / "up1" / "a.dcm").read_bytes()
    assert _leftovers((tmp_path / "up1" / "a.dcm").read_bytes()) == []
    # the pseudonym a site computes for its original UID is the one written
    key = SiteKey.load_or_create(secret)
    assert key.uid(STUDY_UID) == da["StudyInstanceUID"]
    assert key.uid(SOP_B) == db["SOPInstanceUID"]
    method = pydicom.dcmread(tmp_path / "up1" / "a.dcm").DeidentificationMethod
    assert f"keyed pseudonyms, site key {key.fingerprint}" in method


def test_another_sites_secret_gives_an_unrelated_mapping(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = study
    mine = SiteKey.from_text("a" * 64)
    theirs = SiteKey.from_text("b" * 64)
    deidentify_file(a, tmp_path / "mine.dcm", new_anonymizer(key=mine))
    deidentify_file(a, tmp_path / "theirs.dcm", new_anonymizer(key=theirs))
    m, t = (pydicom.dcmread(tmp_path / n) for n in ("mine.dcm", "theirs.dcm"))
    for k in ("StudyInstanceUID", "SOPInstanceUID", "SeriesInstanceUID", "PatientID",
              "PatientName", "StudyDate", "AccessionNumber"):
        assert m[k].value != t[k].value, k
    assert mine.fingerprint != theirs.fingerprint
    assert mine.date_shift_days("p") != theirs.date_shift_days("p")


def test_date_shift_is_per_patient_and_keeps_intervals(tmp_path: Path) -> None:
    key = SiteKey.from_text("s" * 64)
    anon = KeyedAnonymizer(key)
    out = {}
    for pid, date in (("P1", "20200110"), ("P1", "20200301"), ("P2", "20200110")):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.PatientID, ds.StudyDate, ds.StudyTime = pid, date, "101500"
        anon.anonymize(ds)
        out[(pid, date)] = (ds.StudyDate, ds.StudyTime)
    # one patient: both dates moved by the same whole number of days, time of day kept
    from datetime import date as d

    def day(s: str) -> d:
        return d(int(s[:4]), int(s[4:6]), int(s[6:]))

    p1a, p1b = out[("P1", "20200110")][0], out[("P1", "20200301")][0]
    assert (day(p1b) - day(p1a)).days == (day("20200301") - day("20200110")).days
    assert (day("20200110") - day(p1a)).days == key.date_shift_days(patient_key(
        _with(PatientID="P1")))
    assert 62 <= key.date_shift_days("anything") <= 730
    assert out[("P1", "20200110")][1] == "101500"
    # another patient, the same day: another shift
    assert out[("P2", "20200110")][0] != p1a


def _with(**values: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def test_patient_key_falls_back_to_the_study() -> None:
    assert patient_key(_with(PatientID="X", IssuerOfPatientID="H")) == "patient\0H\0X"
    assert patient_key(_with(StudyInstanceUID="1.2.3")) == "study\x001.2.3"


def test_secret_file_is_created_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / SECRET_FILE
    first = SiteKey.load_or_create(path)
    assert SiteKey.load_or_create(path) == first  # not rewritten
    assert len(path.read_text().strip()) == 64
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no side file left
    assert "secret" not in repr(first) and path.read_text().strip() not in repr(first)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        SiteKey.load_or_create(path)


def test_given_secrets_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        SiteKey.from_text("short")
    assert SiteKey.from_text(" " + "k" * 40 + "\n") == SiteKey.from_text("k" * 40)


def test_read_deidentified_gives_the_keyed_header(study: tuple[Path, Path]) -> None:
    a, _ = study
    key = SiteKey.from_text("r" * 64)
    ds = read_deidentified(a, new_anonymizer(key=key))
    assert ds.StudyInstanceUID == key.uid(STUDY_UID) and ds.SOPInstanceUID == key.uid(SOP_A)
    assert "PixelData" not in ds and ds.Rows and ds.PatientIdentityRemoved == "YES"
    assert str(ds.PatientName) != PHI["PatientName"]
