"""tools.vision.window: a CT re-windowed by preset, stored as an image of its own."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.ingest.loader import load_image
from tools.ingest.windowing import WINDOW_PRESETS
from tools.spec import ToolDeps
from tools.vision.basic import basic_tools
from tools.vision.window import TOOLS, rewindow


def _ct_ramp() -> LoadedImage:
    """A 2x4 CT in HU: -1500, -1000, ..., 2000 (the lung window is -1350 .. 150 HU)."""
    hu = np.arange(-1500.0, 2001.0, 500.0, dtype=np.float32).reshape(2, 4)
    return LoadedImage(pixels=hu, display=np.zeros((2, 4), np.uint8), spacing_mm=(0.7, 0.7),
                       meta={"modality": "CT", "units": "HU"}, source_format="dicom")


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_each_preset_maps_its_hu_range_to_black_through_white(preset):
    center, width = WINDOW_PRESETS[preset]
    w = rewindow(_ct_ramp(), f" {preset.upper()} ")
    assert (w.preset, w.center_hu, w.width_hu) == (preset, center, width)
    hu = w.image.pixels.astype(np.float64)
    lo, hi = center - width / 2, center + width / 2
    assert (w.image.display[hu <= lo] == 0).all() and (w.image.display[hu >= hi] == 255).all()
    inside = (hu > lo) & (hu < hi)
    expected = np.round((hu[inside] - lo) / width * 255)
    assert np.array_equal(w.image.display[inside], expected.astype(np.uint8))


def test_lung_window_values():
    # Lung: -1350 .. 150 HU. -1000 HU (air) -> 350 / 1500 * 255 = 59.5 -> 60; -500 -> 144.5
    # -> 144 and 0 -> 229.5 -> 230 (numpy rounds half to even); 500 HU and above -> 255.
    w = rewindow(_ct_ramp(), "lung")
    assert w.image.display.tolist() == [[0, 60, 144, 230], [255, 255, 255, 255]]


def test_the_tool_stores_a_new_image_with_unchanged_hu(store):
    ct = load_image(get_testdata_file("CT_small.dcm"))
    original = store.put(ct).id
    [spec] = TOOLS
    tool = spec.tool(ToolDeps(store))
    ev = tool.invoke({"image_id": original, "preset": "bone"})
    new_id = ev.data["window_image_id"]
    assert new_id != original and new_id in store
    assert ev.tool == "window" and ev.image_id == original and ev.score == 1.0
    assert "centre 400 HU, width 1800 HU" in ev.summary and new_id in ev.summary
    assert {(m.name, m.value, m.unit) for m in ev.measurements} == {
        ("window_center", 400.0, "HU"), ("window_width", 1800.0, "HU")}
    shown, before = store.get(new_id), store.get(original)
    assert np.array_equal(shown.pixels, before.pixels) and shown.spacing_mm == before.spacing_mm
    assert not np.array_equal(shown.display, before.display)
    assert shown.meta["window"] == "bone" and shown.meta["units"] == "HU"
    # The same window again is the same image; another window is another image.
    assert tool.invoke({"image_id": original, "preset": "bone"}).data["window_image_id"] == new_id
    lung = tool.invoke({"image_id": new_id, "preset": "lung"}).data["window_image_id"]
    assert lung not in (new_id, original)
    # Other tools take the new id, and measure the original HU on it.
    describe = {t.name: t for t in basic_tools(store)}["describe_image"]
    same = describe.invoke({"image_id": original}).measurements
    assert describe.invoke({"image_id": new_id}).measurements == same


def test_non_ct_and_unknown_presets_are_refused(store):
    mr = store.put(load_image(get_testdata_file("MR_small.dcm"))).id
    tool = TOOLS[0].tool(ToolDeps(store))
    # The tool's domain (CT) refuses an MR before it runs; its own check refuses pixels that
    # are not HU whatever the modality says.
    with pytest.raises(ToolInputError, match=r"window is validated on CT in Hounsfield units.*modality is MR, not CT"):
        tool.invoke({"image_id": mr, "preset": "brain"})
    with pytest.raises(ToolInputError, match="not in Hounsfield units"):
        rewindow(store.get(mr), "brain")
    ct = store.put(_ct_ramp()).id
    with pytest.raises(ToolInputError, match="unknown window preset 'liver'"):
        tool.invoke({"image_id": ct, "preset": "liver"})
