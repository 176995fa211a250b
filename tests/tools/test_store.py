"""tools.store: images by content id on disk, and volumes' planes stored as images."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import phantom
from tests.tools.ingest.helpers import POSITIONS, write_series
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.ingest.loader import load_image
from tools.planes import is_volume
from tools.store import ImageStore
from tools.vision.basic import describe, measure_distance


def test_put_get_round_trip_across_instances(medloop_home):
    s1 = ImageStore(medloop_home / "s")
    ref = s1.put(phantom())
    assert ref.id.startswith("img-") and len(ref.id) == 16
    assert "spacing 0.5x0.5 mm" in ref.summary
    s2 = ImageStore(medloop_home / "s")  # a new process would see the same files
    img = s2.get(ref.id)
    np.testing.assert_array_equal(img.pixels, phantom().pixels)
    assert img.spacing_mm == (0.5, 0.5) and ref.id in s2


def test_same_content_same_id_and_concurrent_puts(medloop_home):
    store = ImageStore(medloop_home / "s")
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(store.put(phantom()).id)) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert store.put(phantom(seed=2)).id != ids[0]


def test_unknown_ids_and_keys(store):
    with pytest.raises(ToolInputError, match="unknown image id"):
        store.get("img-000000000000")
    with pytest.raises(ToolInputError):
        store.get("../../etc/passwd")
    with pytest.raises(ToolInputError):
        store.get_array("nope")
    key = store.put_array(np.ones((3, 3), bool), "mask-1")
    assert store.get_array(key).sum() == 9
    with pytest.raises(ValueError):
        store.put_array(np.ones(2), "../escape")


def test_unknown_spacing_is_said(store):
    ref = store.put(phantom(spacing=None))
    assert ref.spacing_mm is None and "pixel spacing unknown" in ref.summary


def _volume(slices: int = 5) -> LoadedImage:
    """A synthetic axial CT volume: slice k holds the value 100 * k, 3 mm apart."""
    px = np.stack([np.full((8, 10), 100.0 * k, np.float32) for k in range(slices)])
    return LoadedImage(pixels=px, display=np.zeros((8, 10), np.uint8), spacing_mm=(0.5, 0.7),
                       spacing_source="PixelSpacing",
                       meta={"modality": "CT", "units": "HU", "slice_spacing_mm": 3.0,
                             "slice_orientation": "axial", "frames": slices},
                       source_format="dicom-series")


def test_volume_planes_persist_with_their_origin(medloop_home):
    s1 = ImageStore(medloop_home / "s")
    vol = s1.put(_volume())
    assert vol.plane is None and vol.volume_id is None
    sag = s1.put_plane(vol.id, "sagittal", 9)
    s2 = ImageStore(medloop_home / "s")  # a resumed conversation in a new process
    assert s2.ref(sag.id) == sag and sag.volume_id == vol.id and sag.plane == "sagittal"
    img = s2.get(sag.id)
    assert img.pixels.shape == (5, 8) and img.spacing_mm == (3.0, 0.5)
    assert img.pixels[:, 0].tolist() == [400.0, 300.0, 200.0, 100.0, 0.0]  # superior on top
    assert "sagittal plane 10/10 of " + vol.id in sag.summary
    with pytest.raises(ToolInputError, match="outside the volume"):
        s2.put_plane(vol.id, "sagittal", 10)
    with pytest.raises(ToolInputError, match="unknown image id"):
        s2.put_plane("img-000000000000", "axial")


def test_volume_without_spacing_gives_planes_without_spacing(store):
    vol = _volume()
    vol.spacing_mm, vol.spacing_source = None, None
    ref = store.put(vol)
    assert all(store.get(v.id).spacing_mm is None for v in store.put_views(ref.id))


def test_store_keeps_the_volume_and_cuts_planes(tmp_path: Path, store: ImageStore) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    assert is_volume(vol) and vol.meta["slice_orientation"] == "axial"
    ref = store.put(vol)
    assert ref.shape == (6, 128, 128) and "6-slice axial volume" in ref.summary
    assert "2.5 mm apart" in ref.summary

    views = store.put_views(ref.id)
    assert [v.plane for v in views] == ["axial", "coronal", "sagittal"]
    assert all(v.volume_id == ref.id and v.id != ref.id for v in views)
    axial, coronal, sagittal = (store.get(v.id) for v in views)
    px = store.get(ref.id).pixels  # the volume itself, kept whole by its id
    np.testing.assert_array_equal(axial.pixels, px[3])
    np.testing.assert_array_equal(coronal.pixels, px[::-1, 64])  # superior slice on top
    np.testing.assert_array_equal(sagittal.pixels, px[::-1, :, 64])
    assert axial.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert axial.spacing_source == "PixelSpacing" and coronal.spacing_source == "volume geometry"
    # Reformatted rows are slices: their spacing is the slice spacing from the positions.
    assert coronal.spacing_mm == pytest.approx((2.5, 0.661468))
    assert sagittal.spacing_mm == pytest.approx((2.5, 0.661468))
    assert coronal.meta["units"] == "HU" and coronal.meta["volume_id"] == ref.id
    assert "coronal plane 65/128 of " + ref.id in views[1].summary
    # 2D tools work on a plane, in real mm: 4 slices down the coronal plane = 10 mm.
    assert measure_distance(coronal, [10, 0, 10, 4]).length_mm == pytest.approx(10.0)
    d = describe(coronal)
    assert d.stats.unit == "HU" and d.frames == 1
    assert d.fov_mm == pytest.approx((128 * 0.661468, 6 * 2.5))
    # Any slice can be asked for; one plane image per content, so asking twice is free.
    first = store.put_plane(ref.id, "axial", 0)
    np.testing.assert_array_equal(store.get(first.id).pixels, px[0])
    assert store.put_plane(ref.id, "axial", 0).id == first.id
