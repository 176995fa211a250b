"""Small real tools over the image store, for driving the loop in tests."""

from __future__ import annotations

import threading
import time

import numpy as np
from pydantic import BaseModel, Field

from tools.base import ImageArgs, make_tool
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Assertion, Evidence, Measurement
from tools.store import ImageStore


class BoxArgs(ImageArgs):
    threshold: float = Field(description="intensity threshold")


class FindingArgs(BaseModel):
    image_id: str
    present: bool


def loop_tools(store: ImageStore, *, hang_s: float = 30.0, slow_s: float = 0.4):
    intervals: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def mean_intensity(a: ImageArgs) -> Evidence:
        img = store.get(a.image_id)
        m = float(np.mean(img.pixels))
        return Evidence(
            tool="mean_intensity",
            image_id=a.image_id,
            score=0.9,
            summary=f"mean intensity {m:.1f} a.u.",
            measurements=[Measurement(name="mean", value=round(m, 1), unit="a.u.")],
        )

    def bright_area(a: BoxArgs) -> Evidence:
        img = store.get(a.image_id)
        if a.threshold <= 0:
            raise ToolInputError("threshold must be positive")
        n = int((img.pixels > a.threshold).sum())
        sp = img.spacing_mm or (1.0, 1.0)
        area = n * sp[0] * sp[1]
        return Evidence(
            tool="bright_area",
            image_id=a.image_id,
            score=0.8,
            summary=f"area above {a.threshold:g}: {area:.1f} mm2",
            measurements=[
                Measurement(name="area", value=area, unit="mm2", spacing_mm=img.spacing_mm)
            ],
        )

    def broken(a: ImageArgs) -> Evidence:
        raise ToolFailure("model weights missing")

    def hangs(a: ImageArgs) -> Evidence:
        time.sleep(hang_s)
        return Evidence(tool="hangs", summary="finally")

    def slow(a: ImageArgs) -> Evidence:
        t0 = time.perf_counter()
        time.sleep(slow_s)
        with lock:
            intervals.append((threading.current_thread().name, t0, time.perf_counter()))
        return Evidence(tool="slow", image_id=a.image_id, summary="slow done", score=0.7)

    def finding(a: FindingArgs) -> Evidence:
        return Evidence(
            tool="finding",
            image_id=a.image_id,
            score=0.6,
            summary=f"nodule {'present' if a.present else 'absent'}",
            assertions=[Assertion(finding="nodule", present=a.present, probability=0.6)],
        )

    tools = [
        make_tool(
            mean_intensity,
            name="mean_intensity",
            description="Mean pixel value.",
            args_schema=ImageArgs,
        ),
        make_tool(
            bright_area,
            name="bright_area",
            description="Area above a threshold, mm2.",
            args_schema=BoxArgs,
        ),
        make_tool(broken, name="broken", description="Always fails.", args_schema=ImageArgs),
        make_tool(hangs, name="hangs", description="Never returns in time.", args_schema=ImageArgs),
        make_tool(slow, name="slow", description="Takes a while.", args_schema=ImageArgs),
        make_tool(
            finding,
            name="finding",
            description="Says whether a nodule is present.",
            args_schema=FindingArgs,
        ),
    ]
    return tools, intervals
