"""tools.ingest.nifti: NIfTI volumes reoriented to radiological axial slices, bombs refused."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import tools.ingest.nifti as nifti
from tools.errors import IngestError, NotAnImageError
from tools.ingest.guard import ImageTooLargeError
from tools.ingest.loader import load_image


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_ras_volume(tmp_path: Path, suffix: str) -> None:
    data = np.zeros((20, 30, 10), dtype=np.int16)  # (X, Y, Z) voxels
    data[0, 29, 9] = 1000  # patient-left-most, most anterior, most superior voxel (RAS affine)
    data[5:15, 10:20, 3:7] = 200
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    path = tmp_path / f"brain{suffix}"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    img = load_image(path)
    assert img.source_format == "nifti" and img.pixels.shape == (10, 30, 20)
    assert img.spacing_mm == pytest.approx((0.9, 0.8))
    assert img.meta["slice_spacing_mm"] == pytest.approx(3.0)
    # Radiological layout: top slice = superior, row 0 = anterior, last column = patient left.
    assert img.pixels[9, 0, 19] == 1000
    assert img.display.shape == (30, 20) and img.frames == 10


def test_nifti_lps_affine_is_reoriented(tmp_path: Path) -> None:
    data = np.zeros((20, 30, 10), dtype=np.float32)
    data[0, 0, 0] = 5.0  # with x, y flipped (LPS-like) voxel 0 is patient right, anterior
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "lps.nii"))
    img = load_image(tmp_path / "lps.nii")
    assert img.pixels[0, 0, 0] == 5.0  # image left = patient right, top row = anterior


def test_nifti_4d_keeps_first_volume_and_bad_file_is_refused(tmp_path: Path) -> None:
    data = np.stack([np.full((8, 8, 4), v, np.float32) for v in (1.0, 2.0)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    img = load_image(tmp_path / "fmri.nii.gz")
    assert img.pixels.shape == (4, 8, 8) and (img.pixels == 1.0).all()
    assert any("4D" in n for n in img.notes)
    (tmp_path / "bad.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(NotAnImageError, match=r"bad\.nii: not a readable NIfTI"):
        load_image(tmp_path / "bad.nii")


def test_nifti_absurd_header_dimensions(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    path = tmp_path / "huge.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    dims = np.frombuffer(bytes(raw[40:56]), dtype="<i2").copy()
    dims[1:4] = 30000  # 2.7e13 voxels declared
    raw[40:56] = dims.astype("<i2").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(IngestError, match=r"huge\.nii: image is too large"):
        load_image(path)


def test_nifti_gzip_bomb_is_refused_from_the_header(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzipped float64 volume of zeros: tiny on disk, refused before it is inflated."""
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float64), np.eye(4)),
             tmp_path / "bomb.nii.gz")
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 10_000  # 2 MiB of voxels inflated
    monkeypatch.setattr(nifti, "MAX_NIFTI_BYTES", 2**20)  # as if 1 GiB, scaled down
    with pytest.raises(ImageTooLargeError, match=r"bomb\.nii\.gz: .*2097152 bytes of voxel"):
        load_image(tmp_path / "bomb.nii.gz")
