"""The GPU memory budget: sizes parsed, least recently used models dropped, settings read.

The registry's budget counts the devices it is told to; these tests count ``cpu`` so that
real (small) torch models loaded through ``load_once`` exercise it on a machine without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from tools.errors import ToolFailure
from tools.models.budget import MemoryBudget, device_of, parse_memory
from tools.models.registry import (
    is_loaded,
    load_once,
    loaded_models,
    memory_budget,
    set_memory_budget,
    unload,
)

KEYS = [f"budget-test-{c}:cpu" for c in "abcd"]


@pytest.fixture(autouse=True)
def _clean_budget():
    set_memory_budget(None)
    for k in KEYS:
        unload(k)
    yield
    set_memory_budget(None)
    for k in KEYS:
        unload(k)


@pytest.mark.parametrize("text, mb", [("20GB", 20_000), ("512 MB", 512), ("1.5GiB", 1610.612736),
                                      ("24g", 24_000), (" 800mib ", 838.8608), ("0.5TB", 500_000)])
def test_memory_sizes_parse_to_megabytes(text, mb):
    assert parse_memory(text) == pytest.approx(mb)


@pytest.mark.parametrize("text", ["20", "twenty GB", "0GB", "-1GB", "5 parsecs", ""])
def test_sizes_without_a_unit_or_positive_amount_are_refused(text):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)


def test_device_is_read_from_the_key_suffix():
    assert [device_of(k) for k in ("hf-sam:org/m:cuda", "lite-medsam:cpu", "x:cuda:1",
                                   "rapidocr", "open_clip:hf-hub:org/m:cuda")] == [
        "cuda", "cpu", "cuda:1", "cpu", "cuda"]


def _tiny(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Linear(8, 2)


def test_loading_past_the_budget_unloads_the_least_recently_used_model():
    set_memory_budget(100, devices=("cpu",))
    a, b, c, d = KEYS
    ma = load_once(a, lambda: _tiny(0), memory_mb=40)
    load_once(b, lambda: _tiny(1), memory_mb=40)
    assert memory_budget()["used_mb"] == 80
    assert load_once(a, lambda: _tiny(9), memory_mb=40) is ma  # a hit: a is now the newest
    load_once(c, lambda: _tiny(2), memory_mb=40)  # 120 > 100: b, least recently used, goes
    assert [is_loaded(k) for k in (a, b, c)] == [True, False, True]
    rows = {r["key"]: r for r in loaded_models()}
    assert [r["key"] for r in loaded_models() if r["key"] in KEYS] == [a, c]  # LRU first
    assert rows[a]["uses"] == 2 and rows[a]["counted"] and rows[c]["declared_mb"] == 40
    assert memory_budget() == {"limit_mb": 100, "devices": ["cpu"], "used_mb": 80}
    # b loads again on its next use (a fresh model), pushing out a, now the oldest.
    x = np.ones((1, 8), np.float32)
    import torch

    again = load_once(b, lambda: _tiny(1), memory_mb=40)
    assert not is_loaded(a) and is_loaded(b) and is_loaded(c)
    assert again(torch.from_numpy(x)).shape == (1, 2)


def test_a_model_larger_than_the_whole_budget_is_refused_and_nothing_is_dropped():
    set_memory_budget(100, devices=("cpu",))
    a, b = KEYS[:2]
    load_once(a, lambda: _tiny(0), memory_mb=60)
    with pytest.raises(ToolFailure, match=r"needs about 150 MB .* more than the whole GPU "
                                          r"memory budget of 100 MB"):
        load_once(b, lambda: _tiny(1), memory_mb=150)
    assert is_loaded(a) and not is_loaded(b)
    assert memory_budget()["used_mb"] == 60


def test_uncounted_devices_and_failed_loads_take_no_room():
    set_memory_budget(50)  # counts cuda only: these CPU models are listed, never dropped
    a, b = KEYS[:2]
    load_once(a, lambda: _tiny(0), memory_mb=40)
    load_once(b, lambda: _tiny(1), memory_mb=40)
    assert is_loaded(a) and is_loaded(b) and memory_budget()["used_mb"] == 0
    assert not {r["counted"] for r in loaded_models() if r["key"] in KEYS[:2]} - {False}

    set_memory_budget(50, devices=("cpu",))  # lowering the limit drops the oldest at once
    assert not is_loaded(a) and is_loaded(b)

    def broken():
        raise OSError("no weights")

    with pytest.raises(OSError):
        load_once(KEYS[2], broken, memory_mb=10)
    assert memory_budget()["used_mb"] == 40  # the failed load's reservation was released


def test_the_budget_itself_orders_by_use_and_spills_on_measured_sizes():
    budget = MemoryBudget(100, devices=("cuda",))
    assert budget.reserve("a:cuda", "cuda", 30) == []
    budget.commit("a:cuda")
    assert budget.reserve("b:cuda", "cuda", None) == []  # unknown size: counted once measured
    assert budget.reserve("c:cuda", "cuda", 50) == []
    # b is still loading: it cannot be dropped, and its measured size is what counts.
    assert budget.commit("b:cuda", measured_mb=45) == ["a:cuda"]  # 30 + 45 + 50 > 100
    budget.commit("c:cuda")
    budget.touch("b:cuda")
    assert [r.key for r in budget.snapshot()] == ["c:cuda", "b:cuda"]
    assert budget.reserve("d:cuda", "cuda", 20) == ["c:cuda"]
    budget.cancel("d:cuda")
    assert budget.used_mb() == 45


def test_gpu_mem_is_a_setting_and_default_tools_apply_it(monkeypatch, store):
    from agent.context import AgentContext
    from agent.planner.toolset import default_tools

    ctx = AgentContext.from_env({"MEDLOOP_GPU_MEM": "20GB", "MEDLOOP_DEVICE": "cpu"})
    assert ctx.gpu_mem == "20GB" and ctx.gpu_mem_mb == 20_000
    with pytest.raises(ValueError, match=r"gpu_mem .*MEDLOOP_GPU_MEM.*e\.g\. 20GB"):
        AgentContext.from_env({"MEDLOOP_GPU_MEM": "20"})
    default_tools(AgentContext(gpu_mem="1.5GB", device="cpu", home=store.root.parent), store)
    assert memory_budget()["limit_mb"] == 1500
    default_tools(AgentContext(device="cpu", home=store.root.parent), store)
    assert memory_budget()["limit_mb"] is None


def test_a_faiss_index_stays_on_the_cpu_without_faiss_gpu():
    import faiss

    from retrievers.index import IndexParams, VectorIndex

    idx = VectorIndex(IndexParams(dim=4, kind="flat"))
    vecs = np.eye(4, dtype=np.float32)
    idx.add(vecs, [10, 11, 12, 13])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here: the fallback is not what runs")
    assert idx._gpu_index() is None
    scores, ids = idx.search(vecs[:1], 2)
    assert ids[0][0] == 10 and scores[0][0] == pytest.approx(1.0)
