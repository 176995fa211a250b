"""Load time and peak memory of ``load_image`` against plain ``pydicom.dcmread`` + ``pixel_array``.

Cases (pydicom-data files; the series are written to a temp folder by this script):

* ``RG1_UNCI.dcm``: chest radiograph, 1955 x 1841, uncompressed (decoded in-process);
* ``RG1_J2KR.dcm``: the same image, JPEG 2000 lossless (medloop decodes it in the isolated
  child process, so this row shows the isolation overhead on a 7 MB array);
* a CT series of 40 copies of ``693_UNCI.dcm`` (512 x 512 head CT), 5 mm apart, shuffled names;
* the same series from ``693_J2KR.dcm`` (JPEG 2000 lossless slices).

The plain baseline reads each file with ``pydicom.dcmread`` and takes ``.pixel_array`` (for a
series: every file, sorted by ImagePositionPatient z, stacked); it does none of medloop's work
(checks, rescale to HU as float32, display rendering, metadata, isolation).

Each (case, method) runs in its own fresh ``spawn`` process: ``first`` is the first load in that
process (imports done beforehand; for medloop it includes starting the decoder child), ``warm``
the best of the next 7 loads (the minimum: on a shared machine it is the least disturbed).
``peak MiB`` is tracemalloc's peak during one warm load (numpy buffers included) in the loading
process; ``decoder MiB`` is the peak RSS of medloop's decoder
child (compressed cases only), read after it is stopped.

Usage: python bench/ingest_load.py
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEATS = 7
SLICES = 40


def _plain(path: Path) -> Any:
    import numpy as np
    import pydicom

    if path.is_dir():
        dss = [pydicom.dcmread(f) for f in sorted(path.iterdir())]
        dss.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
        return np.stack([ds.pixel_array for ds in dss])
    return pydicom.dcmread(path).pixel_array


def _medloop(path: Path) -> Any:
    from tools.ingest.loader import load_image

    return load_image(path).pixels


def _measure(method: str, path: str, queue: Any) -> None:
    """Runs in a fresh child: time and memory of one loading method on one input."""
    import resource

    import numpy  # noqa: F401  imports paid before timing
    import pydicom  # noqa: F401

    import tools.ingest.loader  # noqa: F401

    func = _plain if method == "pydicom" else _medloop
    p = Path(path)
    t0 = time.perf_counter()
    shape = func(p).shape
    first = time.perf_counter() - t0
    warm = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        func(p)
        warm.append(time.perf_counter() - t0)
    tracemalloc.start()
    func(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    decoder_mib = None
    if method == "medloop":
        from tools.ingest.guard import stop_worker

        if stop_worker():
            decoder_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # Best of REPEATS: on a shared machine the minimum is the least disturbed estimate.
    queue.put({"shape": shape, "first": first, "warm": min(warm),
               "peak": peak / 2**20, "decoder": decoder_mib})


def _series(folder: Path, source: str) -> Path:
    """SLICES copies of a pydicom-data CT slice, 5 mm apart, in shuffled file names."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir()
    src = get_testdata_file(source)
    uid = generate_uid()
    names = list(range(SLICES))
    random.Random(0).shuffle(names)
    for k in range(SLICES):
        ds = pydicom.dcmread(str(src))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-122.5, -112.4, 47.0 + 5.0 * k]
        ds.save_as(folder / f"IM{names[k]:04d}.dcm")
    return folder


def main() -> None:
    """Print the table (markdown)."""
    from pydicom.data import get_testdata_file

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {
            "RG1_UNCI.dcm (CR, uncompressed)": Path(str(get_testdata_file("RG1_UNCI.dcm"))),
            "RG1_J2KR.dcm (CR, JPEG 2000)": Path(str(get_testdata_file("RG1_J2KR.dcm"))),
            f"CT series, {SLICES} x 693_UNCI (uncompressed)": _series(Path(tmp) / "ct", "693_UNCI.dcm"),
            f"CT series, {SLICES} x 693_J2KR (JPEG 2000)": _series(Path(tmp) / "ctj2k", "693_J2KR.dcm"),
        }
        print("| input | shape | pydicom first / warm (ms) | medloop first / warm (ms) | "
              "warm ratio | pydicom peak MiB | medloop peak MiB | decoder child MiB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for label, path in inputs.items():
            res = {}
            for method in ("pydicom", "medloop"):
                queue = ctx.Queue()
                proc = ctx.Process(target=_measure, args=(method, str(path), queue))
                proc.start()
                res[method] = queue.get(timeout=600)
                proc.join()
            a, b = res["pydicom"], res["medloop"]
            dec = f"{b['decoder']:.0f}" if b["decoder"] else "-"
            print(f"| {label} | {'x'.join(map(str, b['shape']))} | "
                  f"{1e3 * a['first']:.1f} / {1e3 * a['warm']:.1f} | "
                  f"{1e3 * b['first']:.1f} / {1e3 * b['warm']:.1f} | "
                  f"{b['warm'] / a['warm']:.2f} | {a['peak']:.1f} | {b['peak']:.1f} | {dec} |")


if __name__ == "__main__":
    main()
