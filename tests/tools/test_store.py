from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import phantom
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.store import ImageStore


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
