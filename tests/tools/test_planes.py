"""tools.planes: 2D planes cut from volumes, with their spacing and one window for all."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.tools.ingest.helpers import CT, POSITIONS, write_series
from tools.errors import ToolInputError
from tools.ingest.loader import load_image
from tools.planes import orthogonal_views, volume_plane
from tools.store import ImageStore


def test_orthogonal_views_shapes_and_orientation() -> None:
    s, h, w = 10, 30, 20
    vol = np.zeros((s, h, w), np.float32)
    vol[s - 1] = 7.0  # the most superior slice
    views = orthogonal_views(vol)
    assert views["axial"].shape == (h, w)
    assert views["coronal"].shape == (s, w) and views["sagittal"].shape == (s, h)
    assert (views["coronal"][0] == 7.0).all() and (views["sagittal"][0] == 7.0).all()
    assert (views["axial"] == vol[s // 2]).all()
    with pytest.raises(ToolInputError):
        orthogonal_views(np.zeros((4, 4)))


def test_plane_display_uses_one_window_for_every_plane(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    vol.meta.pop("window_center", None)
    vol.meta.pop("window_width", None)
    lo, hi = np.percentile(vol.pixels, [0.5, 99.5])
    for plane in ("axial", "coronal", "sagittal"):
        img = volume_plane(vol, plane)
        assert img.display.dtype == np.uint8
        assert (img.display[img.pixels <= lo] == 0).all()
        assert (img.display[img.pixels >= hi] == 255).all()
    vol.meta.update(window_center=[40.0, 400.0], window_width=[400.0, 2000.0])
    img = volume_plane(vol, "coronal")  # the file's first window: -160..240 HU
    assert (img.display[img.pixels <= -160] == 0).all()
    assert (img.display[img.pixels >= 240] == 255).all()


def test_planes_refuse_bad_requests(tmp_path: Path, store: ImageStore) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    with pytest.raises(ToolInputError, match=r"outside the volume \(0-5\)"):
        volume_plane(vol, "axial", 6)
    with pytest.raises(ToolInputError, match="unknown plane"):
        volume_plane(vol, "oblique")
    flat = load_image(CT)
    with pytest.raises(ToolInputError, match="not a volume"):
        volume_plane(flat, "axial")
    with pytest.raises(ToolInputError, match="not a volume"):
        store.put_views(store.put(flat).id)
    # A sagittal stack: its own slices only, reformats would be mislabelled.
    write_series(tmp_path / "sag", POSITIONS, orientation=(0, 1, 0, 0, 0, -1))
    sag = load_image(tmp_path / "sag")
    assert sag.meta["slice_orientation"] == "sagittal"
    with pytest.raises(ToolInputError, match="sagittal stack"):
        volume_plane(sag, "coronal")
    ref = store.put(sag)
    assert [v.plane for v in store.put_views(ref.id)] == ["slice"]


def test_nifti_volume_gets_planes(tmp_path: Path, store: ImageStore) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # X, Y, Z
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 3.0, 1.0])), tmp_path / "v.nii.gz")
    ref = store.put(load_image(tmp_path / "v.nii.gz"))
    views = {v.plane: store.get(v.id) for v in store.put_views(ref.id)}
    assert views["axial"].pixels.shape == (5, 4)
    assert views["axial"].spacing_mm == pytest.approx((0.9, 0.8))
    assert views["coronal"].pixels.shape == (6, 4)
    assert views["coronal"].spacing_mm == pytest.approx((3.0, 0.8))
    assert views["sagittal"].spacing_mm == pytest.approx((3.0, 0.9))
    # Top row of the coronal plane is the most superior voxel row (Z = 5).
    assert views["coronal"].pixels[0].tolist() == data[::-1, 2, 5].tolist()
