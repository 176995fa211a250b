"""Timing and memory of the vision tools (segment, find, measure, measure_lungs, read_text), CPU.

Each tool runs in a fresh process so that its first call pays for loading LiteMedSAM (and the
imports), as a user's first question does. Per tool:

* ``first call``: the first call in the process (imports + weights + encoder + decoder);
* ``warm, new image``: a call on an image not seen before (encoder + decoder);
* ``warm, same image``: the call repeated on that image (embedding cached: decoder only);
* ``peak RSS``: the process's maximum resident memory after those calls.

Then the cost of one box prompt with the embedding cached versus recomputed (the cache cleared
before each box), averaged over boxes on the chest radiograph.

Images: pydicom-data's chest radiograph ``RG1_UNCI.dcm`` (1841x1955) and, as the "new image",
the same film resized to 80 % (a different id, a realistic size); ``segment`` boxes the right
lung, ``segment (point)`` puts one point in it (LiteMedSAM takes boxes only, so that is a
search over growing boxes: one encoder run and about ten decoder runs); ``measure`` measures a
stored mask of the right lung by key (no model). Run:
``.venv/bin/python bench/vision_tools.py [--boxes 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOOLS = ("segment", "segment (point)", "find", "measure_lungs", "measure", "read_text")


def _images() -> tuple[Any, Any]:
    import dataclasses

    import cv2
    from pydicom.data import get_testdata_file

    from tools.ingest.loader import load_image

    img = load_image(get_testdata_file("RG1_UNCI.dcm"))
    h, w = img.display.shape
    small = cv2.resize(img.display, (round(w * 0.8), round(h * 0.8)),
                       interpolation=cv2.INTER_AREA)
    other = dataclasses.replace(img, pixels=small.astype("float32"), display=small)
    return img, other


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_tool(name: str) -> dict[str, float]:
    """Time ``name`` in this (fresh) process; returns seconds and MB."""
    import tempfile

    import numpy as np

    t_import = time.perf_counter()
    from tools.ingest.burned_in import burned_in_tools
    from tools.store import ImageStore
    from tools.vision.segment import vision_tools

    store = ImageStore(tempfile.mkdtemp(prefix="bench-vision-"))
    img, other = _images()
    ids = [store.put(img).id, store.put(other).id]
    tools = {t.name: t for t in [*vision_tools(store), *burned_in_tools(store)]}
    tool = tools[name.split(" ")[0]]
    keys = []
    for im, s in ((img, 1.0), (other, 0.8)):
        mask = np.zeros(im.display.shape[:2], np.uint8)  # an ellipse in the right lung field
        yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        mask[((xx - 490 * s) / (300 * s)) ** 2 + ((yy - 820 * s) / (650 * s)) ** 2 <= 1] = 1
        keys.append(store.put_array(mask, key=f"mask-bench{len(keys)}"))
    base_rss = _peak_rss_mb()

    def args(i: int) -> dict[str, Any]:
        a: dict[str, Any] = {"image_id": ids[i]}
        s = 1.0 if i == 0 else 0.8
        if name == "segment":
            a["box"] = [180 * s, 140 * s, 800 * s, 1500 * s]
        elif name == "segment (point)":
            a["points"] = [[490 * s, 820 * s]]
        elif name == "find":
            a["target"] = "lungs"
        elif name == "measure":
            a["mask_key"] = keys[i]
        return a

    out: dict[str, float] = {}
    for label, i in (("first", 0), ("warm_new", 1), ("warm_same", 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        tool.invoke(args(i))
        out[f"{label}_s"] = time.perf_counter() - t0
        out[f"{label}_cpu_s"] = time.process_time() - c0
    return {**out, "imports_s": time.perf_counter() - t_import, "peak_rss_mb": _peak_rss_mb(),
            "rss_before_mb": base_rss}


def box_cost(n_boxes: int) -> dict[str, float]:
    """Seconds per box with the embedding cached vs recomputed, on RG1."""
    from tools.models.medsam import MedSamPredictor
    from tools.vision.segment import segment

    img, _ = _images()
    p = MedSamPredictor()
    boxes = [(180 + 10 * i, 140, 800 - 10 * i, 1500) for i in range(n_boxes)]
    segment(img.display, boxes[0], p, "warmup")  # load the weights outside the timing
    p.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    for b in boxes:
        p.clear()
        segment(img.display, b, p, "rg1")
    recomputed = (time.perf_counter() - t0) / n_boxes
    recomputed_cpu = (time.process_time() - c0) / n_boxes
    segment(img.display, boxes[0], p, "rg1")
    t0, c0 = time.perf_counter(), time.process_time()
    for b in boxes:
        segment(img.display, b, p, "rg1")
    cached = (time.perf_counter() - t0) / n_boxes
    cached_cpu = (time.process_time() - c0) / n_boxes
    return {"recomputed_s": recomputed, "cached_s": cached, "recomputed_cpu_s": recomputed_cpu,
            "cached_cpu_s": cached_cpu, "boxes": n_boxes}


def main() -> None:
    """Run each tool in its own process, then the per-box comparison; print markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--box-cost", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--boxes", type=int, default=5)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_tool(a.one)))
        return
    if a.box_cost:
        print(json.dumps(box_cost(a.boxes)))
        return

    def child(*extra: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, __file__, *extra], check=True, text=True,
                             capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return json.loads(out.stdout.strip().splitlines()[-1])

    import torch

    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}. Wall seconds, with process CPU seconds in brackets (less "
          "sensitive to other processes on a shared machine).\n")
    print("| tool | first call (s) | warm, new image (s) | warm, same image (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for name in TOOLS:
        r = child("--one", name)
        cells = " | ".join(f"{r[k + '_s']:.2f} ({r[k + '_cpu_s']:.2f})"
                           for k in ("first", "warm_new", "warm_same"))
        print(f"| {name} | {cells} | {r['peak_rss_mb']:.0f} (before the first call: "
              f"{r['rss_before_mb']:.0f}) |")
    b = child("--box-cost", "--boxes", str(a.boxes))
    print(f"\nsegment, one box on RG1 (mean of {b['boxes']:.0f}): embedding recomputed "
          f"{b['recomputed_s']:.3f} s ({b['recomputed_cpu_s']:.3f} CPU s), cached "
          f"{b['cached_s']:.3f} s ({b['cached_cpu_s']:.3f} CPU s): "
          f"{b['recomputed_s'] / b['cached_s']:.0f}x faster")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
