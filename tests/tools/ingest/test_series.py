"""tools.ingest.series: DICOM series folders sorted along the slice normal into one volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

import tools.ingest.dicom as dicom
from tests.tools.ingest.helpers import (
    POSITIONS,
    abort_decode,
    one_line,
    raw_hu,
    rle_series,
    with_preamble,
    write_series,
)
from tools.errors import IngestError, NotAnImageError
from tools.ingest.guard import DecoderCrashedError, InvalidDimensionsError, SuspiciousFileError
from tools.ingest.loader import load_image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_sorted_by_position_whatever_the_file_order(tmp_path: Path, seed: int) -> None:
    positions = [2.5 * k for k in range(7)]
    write_series(tmp_path / "ct", positions, seed=seed)
    img = load_image(tmp_path / "ct")
    assert img.pixels.shape == (7, 128, 128) and img.frames == 7
    assert img.source_format == "dicom-series"
    for k in range(7):
        np.testing.assert_array_equal(img.pixels[k], raw_hu() + 10 * k)
    # Spacing from the geometry (2.5 mm), not SliceThickness (5 mm in CT_small).
    assert img.meta["slice_spacing_mm"] == pytest.approx(2.5)
    assert img.meta["slice_thickness"] == 5.0
    assert img.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert img.meta["units"] == "HU" and img.meta["frames"] == 7
    assert img.display.shape == (128, 128) and img.display.dtype == np.uint8


def test_oblique_series_sorted_along_the_normal(tmp_path: Path) -> None:
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    # Rows along x, columns tilted 30 deg in y-z: the normal has a large y component, so sorting
    # by z alone would still work here but sorting by x would not; negative steps too.
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)
    positions = [-6.0, -3.0, 0.0, 3.0, 6.0]
    write_series(tmp_path / "obl", positions, orientation=orientation, seed=3)
    img = load_image(tmp_path / "obl")
    means = img.pixels.reshape(5, -1).mean(axis=1)
    assert (np.diff(means) > 0).all()  # slice k has +10 k: ascending along the normal
    assert img.meta["slice_spacing_mm"] == pytest.approx(3.0, abs=1e-4)


def test_axial_series_with_a_downward_normal_still_runs_feet_to_head(tmp_path: Path) -> None:
    # Columns running toward the patient's anterior make row x col point inferior.
    write_series(tmp_path / "ct", POSITIONS, orientation=(1, 0, 0, 0, -1, 0))
    vol = load_image(tmp_path / "ct")
    assert vol.meta["slice_orientation"] == "axial"
    # write_series adds 10 * k to slice k at position POSITIONS[k] * normal, normal = -z:
    # the most superior slice is k = 0, so it must come last.
    np.testing.assert_array_equal(vol.pixels[-1], raw_hu())
    np.testing.assert_array_equal(vol.pixels[0], raw_hu() + 50)


def test_irregular_gaps_noted(tmp_path: Path) -> None:
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 9.0, 11.0])
    img = load_image(tmp_path / "gap")
    assert img.meta["slice_spacing_mm"] == pytest.approx(2.0)
    assert any("irregular" in n for n in img.notes)


def test_mixed_series_names_the_uids(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    a, b = generate_uid(), generate_uid()
    write_series(folder, [0.0, 5.0], series_uid=a, prefix="a")
    write_series(folder, [0.0, 5.0], series_uid=b, prefix="b")
    with pytest.raises(IngestError) as info:
        load_image(folder)
    msg = str(info.value)
    assert msg.startswith("mixed: folder mixes 2 series") and a in msg and b in msg
    assert "\n" not in msg


def test_duplicate_positions_and_missing_geometry(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", [0.0, 5.0, 5.0])
    with pytest.raises(IngestError, match="share a position"):
        load_image(tmp_path / "dup")
    write_series(tmp_path / "nogeo", [0.0, 5.0])
    path = next((tmp_path / "nogeo").iterdir())
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    with pytest.raises(InvalidDimensionsError, match="ImagePositionPatient"):
        load_image(tmp_path / "nogeo")


def test_junk_files_ignored_and_single_file_folder(tmp_path: Path) -> None:
    write_series(tmp_path / "s", [0.0, 1.0, 2.0])
    (tmp_path / "s" / "README.txt").write_text("not a slice")
    img = load_image(tmp_path / "s")
    assert img.frames == 3 and any("1 non-DICOM file" in n for n in img.notes)
    write_series(tmp_path / "one", [0.0])
    single = load_image(tmp_path / "one")
    assert single.pixels.shape == (128, 128) and single.source_format == "dicom"
    (tmp_path / "none").mkdir()
    with pytest.raises(NotAnImageError, match="none: folder holds no DICOM files"):
        load_image(tmp_path / "none")


# ---------------------------------------------------------------------------------------------
# Every slice goes through the single-file guards
# ---------------------------------------------------------------------------------------------
def test_polyglot_in_a_series_folder_is_refused(tmp_path: Path) -> None:
    with_preamble(tmp_path, b"\x7fELF", name="slice1.dcm")
    with pytest.raises(SuspiciousFileError, match=r"slice1\.dcm: the DICOM preamble holds"):
        load_image(tmp_path)


def test_aborting_codec_in_a_series_is_named_and_the_process_survives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rle_series(tmp_path / "mr")
    monkeypatch.setattr(dicom, "decode_array", abort_decode)
    with pytest.raises(DecoderCrashedError) as info:
        load_image(tmp_path / "mr")
    assert "decoder crashed (killed by SIGABRT)" in one_line(info.value, "s0.dcm")
    monkeypatch.undo()
    assert load_image(tmp_path / "mr").pixels.shape == (3, 64, 64)
