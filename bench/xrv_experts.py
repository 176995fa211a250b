"""Load time, latency and memory of the TorchXRayVision experts on the CPU (random weights).

Architecture-exact random weights are written where torchxrayvision looks for them (a temp
HOME) and each expert loads them BY NAME through medloop's code, in a fresh process, as a
user's first question would. Per expert:

* ``import``: importing torchxrayvision (and torchvision) in a fresh process;
* ``load``: reading the weight file into the model (``model()``'s first call);
* ``first call``: the first reading of the film (preprocessing + the network's first run);
* ``warm``: the mean of further readings of the film (its per-image cache cleared);
* ``input``: of which preprocessing (grey values, crop or pad, resize) on its own;
* ``peak RSS``: the process's maximum resident memory from the load on, and its growth over
  the memory before the load (weights and one inference: what ``XrvWeights.memory_mb``
  rounds up).

The baseline, measured in the same run in its own process: the packaged default vision
expert, LiteMedSAM's ``segment`` (one box, the image embedding recomputed each call). Film:
pydicom-data's chest radiograph RG1_UNCI (1955x1841). Run:
``.venv/bin/python bench/xrv_experts.py [--repeat 2]``
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXPERTS = ("densenet121-res224-all", "densenet121-res224-all + heat map",
           "resnet50-res512-all", "xrv-pspnet")
BASELINE = "lite-medsam segment"


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Restart the peak-RSS count from now (Linux ``clear_refs`` 5); the RSS now, MB.

    The imports and the film's decoding peak higher than a small model's load and inference,
    so without this the peak would say nothing about the model.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _film() -> Any:
    from pydicom.data import get_testdata_file

    from tools.ingest.loader import load_image

    return load_image(get_testdata_file("RG1_UNCI.dcm"))


def _timed(fn: Any) -> tuple[float, float, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def one_expert(name: str, repeat: int) -> dict[str, float]:
    """Time expert ``name`` in this (fresh) process; seconds and MB."""
    img = _film()
    out: dict[str, float] = {}
    if name == BASELINE:
        from tools.models.medsam import MedSamPredictor
        from tools.vision.segment import segment

        p = MedSamPredictor()
        box = (180, 140, 800, 1500)
        out["rss_before_mb"] = _reset_peak()
        out["first_s"], out["first_cpu_s"], _ = _timed(lambda: segment(img.display, box, p, "a"))
        warm = []
        for _ in range(repeat):
            p.clear()
            warm.append(_timed(lambda: segment(img.display, box, p, "a")))
        out["warm_s"] = sum(w[0] for w in warm) / repeat
        out["warm_cpu_s"] = sum(w[1] for w in warm) / repeat
        out["peak_rss_mb"] = _status_mb("VmHWM")
        return out

    t_module, _, mod = _timed(lambda: importlib.import_module("tools.models.xrv"))
    out["import_s"] = t_module + _timed(mod._xrv)[0]  # torch, torchvision, torchxrayvision
    weights = name.split(" ")[0]
    heat = name.endswith("heat map")
    if weights == "xrv-pspnet":
        expert: Any = mod.AnatomySegmenter("cpu")

        def read() -> Any:
            expert.cache.clear()
            return expert.segment(img, "film")

        def prep() -> Any:
            return mod.anatomy_input(img)
    else:
        expert = mod.XrvClassifier(weights, "cpu")
        size = expert.weights.resolution

        def read() -> Any:
            return expert.classify(img, heatmap=heat)

        def prep() -> Any:
            return mod.classifier_input(img, size)
    out["rss_before_mb"] = _reset_peak()
    out["load_s"], out["load_cpu_s"], _ = _timed(expert.model)
    out["first_s"], out["first_cpu_s"], _ = _timed(read)
    warm = [_timed(read) for _ in range(repeat)]
    out["warm_s"] = sum(w[0] for w in warm) / repeat
    out["warm_cpu_s"] = sum(w[1] for w in warm) / repeat
    out["input_s"] = _timed(prep)[0]
    out["peak_rss_mb"] = _status_mb("VmHWM")
    return out


def main() -> None:
    """Each expert and the baseline in their own process; print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2, help="warm readings per expert")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_expert(a.one, a.repeat)))
        return

    # The weights are written here, once, where each child's torchxrayvision looks for them
    # (its HOME), so that a child's memory is the load and the readings only.
    from tools.models.xrv import write_random_weights

    home = tempfile.mkdtemp(prefix="bench-xrv-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # ~400 MB of weights
    for weights in {n.split(" ")[0] for n in EXPERTS}:
        write_random_weights(weights, Path(home, ".torchxrayvision", "models_data"))

    def child(name: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--repeat",
                              str(a.repeat)], check=True, text=True, capture_output=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore", "HOME": home})
        return json.loads(out.stdout.strip().splitlines()[-1])

    import torch

    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}. Wall seconds, process CPU seconds in brackets; random "
          f"weights, real architectures; warm = mean of {a.repeat}.\n")
    base = child(BASELINE)
    print("| expert | import (s) | load (s) | first call (s) | warm (s) | of which input (s) | "
          f"warm vs {BASELINE} | peak RSS (MB) | RSS growth from load (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in EXPERTS:
        r = child(name)
        print(f"| {name} | {r['import_s']:.2f} | {r['load_s']:.2f} ({r['load_cpu_s']:.2f}) | "
              f"{r['first_s']:.2f} ({r['first_cpu_s']:.2f}) | {r['warm_s']:.2f} "
              f"({r['warm_cpu_s']:.2f}) | {r['input_s']:.2f} | "
              f"{r['warm_s'] / base['warm_s']:.2f}x | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} |")
    print(f"| {BASELINE} (baseline) | | | {base['first_s']:.2f} ({base['first_cpu_s']:.2f}) | "
          f"{base['warm_s']:.2f} ({base['warm_cpu_s']:.2f}) | | 1.00x | "
          f"{base['peak_rss_mb']:.0f} | {base['peak_rss_mb'] - base['rss_before_mb']:.0f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
