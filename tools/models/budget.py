"""The GPU memory budget: models load on first use, and the least recently used ones leave.

A GPU shared by a planner VLM, a segmenter, a chest X-ray classifier and an anatomy model can
hold them all only if someone counts. Every model loads through the registry's ``load_once``
(``tools.models.registry``), which asks a ``MemoryBudget`` for room first: each model declares
its approximate memory (``ModelNeed.memory_mb``, passed as ``load_once(..., memory_mb=)``), and
when loading it would take the models on a budgeted device past the limit
(``AgentContext.gpu_mem``, ``MEDLOOP_GPU_MEM``, e.g. ``20GB``), the least recently used ones
are dropped from the cache first. A model with no declared size counts with what CUDA says it
took once loaded (``torch.cuda.memory_allocated`` before and after; two loads running at once
blur that figure), and as nothing before.

Dropping a model removes the registry's reference; its memory returns when the last holder
lets go (a tool call already running with it finishes first), after which the registry asks
torch to release its cached blocks. A later call loads it again: slower, never wrong.

Only devices in ``devices`` are counted (``cuda`` by default: the CPU's RAM is not what runs
out); the budget still lists every loaded model, counted or not, for ``medloop models``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tools.errors import ToolFailure

__all__ = ["MemoryBudget", "Resident", "device_of", "parse_memory"]

# Decimal units, as GPU vendors and ``nvidia-smi`` print them; the binary ones for who uses them.
_UNITS_MB = {"kb": 1e-3, "mb": 1.0, "gb": 1e3, "tb": 1e6, "k": 1e-3, "m": 1.0, "g": 1e3,
             "t": 1e6, "kib": 1024 / 1e6, "mib": 1024**2 / 1e6, "gib": 1024**3 / 1e6,
             "tib": 1024**4 / 1e6}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str) -> float:
    """Megabytes (10^6 bytes) in ``text``: ``"20GB"``, ``"512 MB"``, ``"1.5GiB"``, ``"24g"``.

    A unit is required: a bare ``"20"`` could be MB or GB, and a wrong guess either starves
    every model or protects nothing.

    Raises:
        ValueError: not a positive amount with a unit (KB, MB, GB, TB or KiB..TiB).
    """
    m = _MEMORY.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS_MB:
        raise ValueError(f"a memory size is a number and a unit, e.g. 20GB or 512MB; got "
                         f"{text!r}")
    mb = float(m.group(1)) * _UNITS_MB[unit]
    if mb <= 0:
        raise ValueError(f"a memory budget must be above zero, got {text!r}")
    return mb


def device_of(key: str) -> str:
    """The device a registry key names by its ``:DEVICE`` suffix (``cpu`` when it names none).

    The registry's keys end in the device a model follows (``hf-sam:REF:cuda``,
    ``lite-medsam:cpu``); a key without one is a CPU-only model.
    """
    parts = key.split(":")
    if len(parts) >= 3 and parts[-2] == "cuda" and parts[-1].isdigit():
        return f"cuda:{parts[-1]}"
    last = parts[-1] if len(parts) > 1 else ""
    return last if last in ("cpu", "cuda") else "cpu"


@dataclass
class Resident:
    """One model in the registry's cache (or being loaded into it).

    Attributes:
        key: its ``load_once`` key.
        device: where it lives (``cpu``, ``cuda``, ``cuda:1``).
        declared_mb: the memory its ``ModelNeed`` declares (None: not declared).
        measured_mb: what CUDA's allocator grew by while it loaded (None: not on CUDA).
        loaded_at: wall-clock time it finished loading (``time.time()``; 0 while loading).
        last_used: ``time.monotonic()`` of its last ``load_once`` (load or cache hit).
        uses: cache hits plus the load.
        loading: True while its loader runs (its memory is reserved, it cannot be dropped).
    """

    key: str
    device: str
    declared_mb: float | None = None
    measured_mb: float | None = None
    loaded_at: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 1
    loading: bool = True

    @property
    def size_mb(self) -> float:
        """What it counts for: the declared size, else the measured one, else 0."""
        if self.declared_mb is not None:
            return self.declared_mb
        return self.measured_mb or 0.0

    def as_dict(self, counted: bool) -> dict[str, Any]:
        """JSON-able row: the fields, ``size_mb``, ``counted`` and seconds since last use."""
        row = asdict(self)
        row.update(size_mb=round(self.size_mb, 1), counted=counted,
                   idle_s=round(time.monotonic() - self.last_used, 1))
        del row["last_used"]
        return row


class MemoryBudget:
    """Which models are loaded, least recently used first, and the room left on the budget.

    ``limit_mb`` None means no limit (the default: nothing is ever dropped); ``devices`` are
    the device kinds counted (``cuda`` covers ``cuda:0``, ``cuda:1``...). Thread-safe; the
    registry calls it under its own lock so that the cache and the budget agree.
    """

    def __init__(self, limit_mb: float | None = None,
                 devices: Iterable[str] = ("cuda",)) -> None:
        self._lock = threading.RLock()
        self._residents: OrderedDict[str, Resident] = OrderedDict()
        self.limit_mb = limit_mb
        self.devices = frozenset(devices)

    def counts(self, device: str) -> bool:
        """Whether a model on ``device`` counts against the limit."""
        return device.split(":", 1)[0] in self.devices

    def used_mb(self) -> float:
        """Memory of the counted models, loaded or loading."""
        with self._lock:
            return sum(r.size_mb for r in self._residents.values() if self.counts(r.device))

    def set_limit(self, limit_mb: float | None, devices: Iterable[str] | None = None
                  ) -> list[str]:
        """A new limit (and counted devices); returns the keys to drop to fit under it."""
        with self._lock:
            self.limit_mb = limit_mb
            if devices is not None:
                self.devices = frozenset(devices)
            return self._victims(0.0, protect=())

    def reserve(self, key: str, device: str, need_mb: float | None) -> list[str]:
        """Room for ``key`` (``need_mb`` on ``device``) before it loads: the keys to drop.

        The reservation counts at once, so two models loading side by side both see it. When
        even dropping every idle model cannot make room (others still loading), the load goes
        ahead over the limit rather than failing a call the GPU may well hold.

        Raises:
            ToolFailure: the model alone needs more than the whole budget.
        """
        with self._lock:
            need = need_mb or 0.0
            if self.limit_mb is not None and self.counts(device) and need > self.limit_mb:
                raise ToolFailure(
                    f"{key} needs about {need:.0f} MB of {device} memory, more than the whole "
                    f"GPU memory budget of {self.limit_mb:.0f} MB (gpu_mem, MEDLOOP_GPU_MEM): "
                    "raise the budget or run it on the CPU")
            victims = self._victims(need, protect=()) if self.counts(device) else []
            for v in victims:
                self._residents.pop(v, None)
            self._residents[key] = Resident(key, device, declared_mb=need_mb)
            return victims

    def commit(self, key: str, measured_mb: float | None = None) -> list[str]:
        """``key`` finished loading; returns further keys to drop if its measured size spills."""
        with self._lock:
            r = self._residents.get(key)
            if r is None:  # forgotten while loading (an explicit unload): count it again
                r = self._residents[key] = Resident(key, device_of(key))
            r.measured_mb = measured_mb
            r.loading = False
            r.loaded_at = time.time()
            r.last_used = time.monotonic()
            self._residents.move_to_end(key)
            victims = self._victims(0.0, protect=(key,)) if self.counts(r.device) else []
            for v in victims:
                self._residents.pop(v, None)
            return victims

    def cancel(self, key: str) -> None:
        """``key``'s loader failed: release its reservation."""
        with self._lock:
            r = self._residents.get(key)
            if r is not None and r.loading:
                del self._residents[key]

    def touch(self, key: str) -> None:
        """``key`` was used: it becomes the most recently used."""
        with self._lock:
            r = self._residents.get(key)
            if r is not None:
                r.last_used = time.monotonic()
                r.uses += 1
                self._residents.move_to_end(key)

    def forget(self, key: str) -> None:
        """``key`` left the cache."""
        with self._lock:
            self._residents.pop(key, None)

    def snapshot(self) -> list[Resident]:
        """Copies of the residents, least recently used first."""
        with self._lock:
            return [Resident(**asdict(r)) for r in self._residents.values()]

    def _victims(self, need_mb: float, protect: Iterable[str]) -> list[str]:
        """Idle counted models to drop, least recently used first, until ``need_mb`` fits."""
        if self.limit_mb is None:
            return []
        keep = set(protect)
        over = self.used_mb() + need_mb - self.limit_mb
        victims: list[str] = []
        for r in self._residents.values():
            if over <= 0:
                break
            if r.loading or r.key in keep or not self.counts(r.device) or r.size_mb <= 0:
                continue
            victims.append(r.key)
            over -= r.size_mb
        return victims
