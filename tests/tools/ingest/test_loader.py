"""tools.ingest.loader: ``load_image`` sends each path to its reader, or refuses it by name."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import tools.ingest.dicom as dicom
from tests.tools.ingest.helpers import POSITIONS, one_line, sample, segfault_decode, write_series
from tools.errors import IngestError, NotAnImageError
from tools.ingest.loader import load_image


# ---------------------------------------------------------------------------------------------
# Not an image, missing, empty: refused by name
# ---------------------------------------------------------------------------------------------
def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("chest x-ray, see report\n" * 20)
    with pytest.raises(NotAnImageError) as info:
        load_image(path)
    assert str(info.value) == "notes.txt: not a DICOM, PNG or JPEG image"


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    with pytest.raises(NotAnImageError) as info:
        load_image(path)
    assert one_line(info.value, "report.pdf") == "report.pdf: not a DICOM, PNG or JPEG image"


def test_missing_empty_and_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"nope\.dcm: file not found"):
        load_image(tmp_path / "nope.dcm")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(NotAnImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    # A folder is read as a DICOM series (tests/tools/ingest/test_series.py); this one has none.
    with pytest.raises(NotAnImageError, match="folder holds no DICOM files"):
        load_image(tmp_path)


def test_message_names_the_file_not_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "Doe_Jane_1970"
    folder.mkdir()
    (folder / "x.txt").write_text("hello")
    with pytest.raises(NotAnImageError) as info:
        load_image(folder / "x.txt")
    assert "Doe_Jane" not in str(info.value)


def test_headerless_dicom_gets_a_clear_message() -> None:
    with pytest.raises(NotAnImageError, match="without the file header"):
        load_image(sample("ExplVR_BigEndNoMeta.dcm"))


# ---------------------------------------------------------------------------------------------
# The CLI reads through load_image: one line, exit 2, for every refusal
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "nifti"])
def test_cli_inspect_volumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             kind: str) -> None:
    from agent.cli.main import main

    if kind == "folder":
        write_series(tmp_path / "ct", POSITIONS)
        target, fmt, shape = tmp_path / "ct", "dicom-series", [6, 128, 128]
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)),
                 tmp_path / "v.nii.gz")
        target, fmt, shape = tmp_path / "v.nii.gz", "nifti", [6, 5, 4]
    assert main(["inspect", str(target), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source_format"] == fmt and data["shape"] == shape
    assert data["metadata"]["slice_orientation"] == "axial"
    assert data["metadata"]["slice_spacing_mm"] == pytest.approx(2.5 if kind == "folder" else 1)


@pytest.mark.parametrize("kind", ["empty-folder", "mixed-folder", "bad-nifti"])
def test_cli_inspect_bad_volume_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    from agent.cli.main import main

    if kind == "empty-folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif kind == "mixed-folder":
        target = tmp_path / "mixed"
        write_series(target, [0.0, 5.0])
        write_series(target, [0.0, 5.0], prefix="b")
    else:
        target = tmp_path / "broken.nii.gz"
        target.write_bytes(b"\x1f\x8b not really gzip")
    code = main(["inspect", str(target), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("medloop: ") and err.count("\n") == 1 and target.name in err


def test_cli_inspect_survives_a_crashing_codec(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    monkeypatch.setattr(dicom, "decode_array", segfault_decode)
    assert main(["inspect", sample("MR_small_RLE.dcm"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("medloop: MR_small_RLE.dcm: decoder crashed (killed by SIGSEGV)")
