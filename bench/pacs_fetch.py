"""Time from ``--study UID`` to the first tool call, against loading the same files from disk.

A throw-away Orthanc (``tests.orthanc``: Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback
holds two studies: pydicom's CT_small.dcm (one 39 kB file) and a 60-slice CT series made from it
(one volume, 2.3 MB). For each, the agent (a scripted planner that calls ``describe_image``
first, and the basic tools) is run three ways, each on a fresh store:

* disk: the files are given as paths (``medloop ask FILE|FOLDER ...``), the baseline;
* dicomweb: QIDO-RS + WADO-RS into a temp folder, then ingest (``ask --study`` over http);
* dimse: C-FIND + C-GET, then ingest (``ask --study`` over ``dicom://``).

The time runs from the start until the planner's first tool call has run (the first *act*
step); the table gives the median of ``--repeats`` runs and its ratio to the disk baseline
measured in the same run. Loopback has no network latency: a real PACS adds its own.
Run: ``.venv/bin/python bench/pacs_fetch.py [--repeats 5] [--slices 60]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import AgentContext, build_graph
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.orthanc import derived, orthanc_missing, temp_orthanc
from tools.pacs.config import PacsConfig
from tools.pacs.fetch import fetch_study, ingest_study
from tools.store import ImageStore
from tools.vision.basic import basic_tools

SERIES_STUDY = "1.2.826.0.1.3680043.8.498.4242.77"


def planner() -> ScriptedChatModel:
    """Calls describe_image on the first image it is shown, then answers."""

    def step(messages: list[Any]) -> Any:
        system = str(messages[0].content)
        image_id = re.search(r"img-[0-9a-f]{12}", system)
        if image_id and "E1 (" not in system:
            return ai(call("describe_image", image_id=image_id[0]))
        return final("done", [("described", ["E1"])] if image_id else [], 0.8)

    return ScriptedChatModel.of(itertools.repeat(step))


def to_first_tool_call(images: list[str], home: Path, fetch: Any = None) -> float:
    """Seconds from the start (fetch included) until the first tool call has run."""
    t0 = time.perf_counter()
    store = ImageStore(home / "store")
    if fetch is not None:
        got = fetch()
        try:
            images = ingest_study(store, got).image_ids
        finally:
            got.delete()
    ctx = AgentContext(llm=planner(), tools=basic_tools(store), home=home, checkpoint=None)
    graph = build_graph(ctx, store=store)
    for event in graph.stream({"messages": [("user", "describe")], "images": images},
                              {"configurable": {"thread_id": "b"}}, stream_mode="updates"):
        if "act" in event:
            return time.perf_counter() - t0
    raise RuntimeError("the planner never called a tool")


def make_series(folder: Path, n: int) -> Path:
    """``n`` CT_small slices 2 mm apart, one series: a volume when loaded."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    series = generate_uid()
    for i in range(n):
        f = derived(get_testdata_file("CT_small.dcm"), folder / f"{i:03d}.dcm",
                    study=SERIES_STUDY, series=series)
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.InstanceNumber = i + 1
        ds.save_as(f, enforce_file_format=True)
    return folder


def main() -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slices", type=int, default=60)
    args = p.parse_args()
    reason = orthanc_missing()
    if reason:
        raise SystemExit(f"bench/pacs_fetch.py: {reason}")
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    ct_study = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    with tempfile.TemporaryDirectory() as tmp, temp_orthanc() as server:
        series = make_series(Path(tmp) / "series", args.slices)
        server.upload(ct)
        for f in sorted(series.iterdir()):
            server.upload(f)
        web = PacsConfig(url=server.dicomweb_url, user=server.user, password=server.password)
        dimse = PacsConfig(url=server.dimse_url)
        cases = [("CT_small, 1 file", ct_study, [str(ct)]),
                 (f"CT series, {args.slices} files", SERIES_STUDY, [str(series)])]
        print(f"{'study':24} {'source':9} {'median s':>9} {'ratio':>6}   "
              f"(cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
        for label, study, paths in cases:
            disk: float | None = None
            for source in ("disk", "dicomweb", "dimse"):
                times = []
                for r in range(args.repeats):
                    home = Path(tmp) / f"{source}-{study[-6:]}-{r}"
                    if source == "disk":
                        times.append(to_first_tool_call(paths, home))
                    else:
                        cfg = web if source == "dicomweb" else dimse
                        times.append(to_first_tool_call(
                            [], home, lambda cfg=cfg, study=study: fetch_study(cfg, study)))
                med = statistics.median(times)
                disk = med if source == "disk" else disk
                assert disk is not None
                print(f"{label:24} {source:9} {med:9.3f} {med / disk:6.2f}")


if __name__ == "__main__":
    main()
