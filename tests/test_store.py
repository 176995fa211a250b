from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import phantom
from tools.errors import ToolInputError
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
