"""The adapters' shared parts: lazy loading once per process, and the embedding cache."""

from __future__ import annotations

import threading

import numpy as np

from tools.models.lazy import EmbeddingCache, LazyModel, content_key


class Counting(LazyModel[dict]):
    kind = "test-counting"
    loads = 0

    def _load(self) -> dict:
        type(self).loads += 1
        return {"ref": self.ref}


def test_a_lazy_model_loads_on_first_use_once_per_process():
    a, b = Counting("m1", "cpu"), Counting("m1", "cpu")
    assert a.key == "test-counting:m1:cpu" and not a.loaded and Counting.loads == 0
    threads = [threading.Thread(target=a.model) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.model() is b.model() and a.loaded and Counting.loads == 1
    assert Counting("m2", "cpu").model() == {"ref": "m2"} and Counting.loads == 2


def test_the_embedding_cache_is_lru_by_id_and_checks_the_size():
    cache: EmbeddingCache[str] = EmbeddingCache(size=2)
    img = np.zeros((4, 5), np.uint8)
    assert cache.get("a", img, lambda: "A") == "A"
    assert cache.get("a", img, lambda: "again") == "A" and cache.computed == 1
    cache.get("b", img, lambda: "B")
    cache.get("a", img, lambda: "unused")  # a is now the most recent
    cache.get("c", img, lambda: "C")  # evicts b
    assert "a" in cache and "b" not in cache and len(cache) == 2
    # The same id with pixels of another size is encoded again, not served stale.
    assert cache.get("a", np.zeros((8, 5), np.uint8), lambda: "A2") == "A2"
    # No id: the pixels are the key.
    cache.clear()
    assert cache.get(None, img, lambda: "P") == "P" and content_key(img) in cache
    assert cache.get(None, img.copy(), lambda: "other") == "P"
