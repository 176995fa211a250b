"""tools.vision.basic: synthetic images of known geometry, then real files through the store."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from tools.errors import ToolInputError
from tools.evidence import Evidence
from tools.image import LoadedImage
from tools.ingest.loader import load_image, percentile_window
from tools.store import ImageStore
from tools.vision.basic import basic_tools, describe, measure_distance, region_stats

# 200 px wide, 100 px tall; rows 0.25 mm apart, columns 0.5 mm apart:
# field of view 200 * 0.5 = 100 mm wide, 100 * 0.25 = 25 mm tall.
W, H = 200, 100
SPACING = (0.25, 0.5)
BLOCK = (50, 20, 100, 40)  # XYXY: 50 px x 20 px = 25 mm x 5 mm, in the top-left quadrant


def synthetic(
    spacing: tuple[float, float] | None = SPACING,
    photometric: str = "MONOCHROME2",
    background: float = 0.0,
    block: float = 1000.0,
    units: str = "a.u.",
) -> LoadedImage:
    px = np.full((H, W), background, dtype=np.float32)
    x0, y0, x1, y1 = BLOCK
    px[y0:y1, x0:x1] = block
    display = percentile_window(px)
    if photometric == "MONOCHROME1":
        display = 255 - display
    return LoadedImage(
        pixels=px,
        display=display,
        spacing_mm=spacing,
        spacing_source="PixelSpacing" if spacing else None,
        meta={"modality": "OT", "photometric": photometric, "units": units},
        source_format="synthetic",
    )


def by_name(ev: Evidence) -> dict[str, tuple[float, str]]:
    return {m.name: (m.value, m.unit) for m in ev.measurements}


@pytest.fixture
def tools(store: ImageStore) -> dict[str, object]:
    return {t.name: t for t in basic_tools(store)}


# ---------------------------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------------------------
def test_describe_geometry_and_intensities() -> None:
    d = describe(synthetic())
    assert (d.width, d.height, d.frames) == (W, H, 1)
    assert d.fov_mm == pytest.approx((100.0, 25.0))
    assert (d.stats.min, d.stats.max, d.stats.unit) == (0.0, 1000.0, "a.u.")
    assert d.stats.mean == pytest.approx(1000 * 50 * 20 / (W * H))  # 50.0
    assert d.background_fraction == pytest.approx(1 - 50 * 20 / (W * H))  # 0.95
    # The bright block sits in the image-left and top halves: 1000 px of each 10000-px half.
    assert d.balance_lr == pytest.approx(0.1)
    assert d.balance_tb == pytest.approx(0.1)


def test_describe_respects_monochrome1() -> None:
    # Same numbers, but in MONOCHROME1 high values are dark: the block is the dark part.
    d = describe(synthetic(photometric="MONOCHROME1"))
    assert d.background_fraction == pytest.approx(0.05)
    assert d.balance_lr == pytest.approx(-0.1) and d.balance_tb == pytest.approx(-0.1)


def test_describe_ct_background_is_air() -> None:
    d = describe(synthetic(background=-1000.0, block=40.0, units="HU"))
    assert d.stats.unit == "HU" and d.stats.min == -1000.0
    assert d.background_fraction == pytest.approx(0.95)


def test_describe_tool_evidence(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic())
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    assert isinstance(ev, Evidence)
    assert ev.tool == "describe_image" and ev.image_id == ref.id and ev.score == 1.0
    assert len(ev.summary) < 300
    assert "200x100 px" in ev.summary and "field of view 100.0x25.0 mm" in ev.summary
    m = by_name(ev)
    assert m["field_of_view_width"] == (100.0, "mm") and m["field_of_view_height"] == (25.0, "mm")
    assert m["row_spacing"] == (0.25, "mm") and m["column_spacing"] == (0.5, "mm")
    assert m["intensity_max"] == (1000.0, "a.u.")
    assert m["background_fraction"] == (0.95, "fraction")


def test_describe_without_spacing_says_so(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic(spacing=None))
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    assert "spacing unknown" in ev.summary
    assert not any(m.unit == "mm" for m in ev.measurements)


def test_describe_real_chest_radiograph(store: ImageStore, tools: dict) -> None:
    ref = store.put(load_image(get_testdata_file("RG1_UNCI.dcm")))
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    assert ev.summary.startswith("CR chest PA, 1841x1955 px")
    assert "spacing unknown" in ev.summary and len(ev.summary) < 300
    m = by_name(ev)
    assert m["width"] == (1841, "px") and m["height"] == (1955, "px")
    assert m["intensity_min"][1] == "a.u." and m["intensity_max"][0] <= 2**15
    assert any("PixelSpacing" in n for n in ev.data["notes"])
    # Bright = dense after inversion: the lower half (diaphragm, abdomen) is the brighter one.
    assert m["balance_top_minus_bottom"][0] < 0


def test_describe_real_ct_in_hu(store: ImageStore, tools: dict) -> None:
    ref = store.put(load_image(get_testdata_file("693_UNCI.dcm")))
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    m = by_name(ev)
    assert m["intensity_median"][1] == "HU"
    assert m["field_of_view_width"][0] == pytest.approx(512 * 0.478516, abs=1e-3)
    assert 0.3 < m["background_fraction"][0] < 0.9  # air around a head
    assert " HU, median" in ev.summary


def test_describe_multiframe_and_colour(store: ImageStore, tools: dict) -> None:
    ref = store.put(load_image(get_testdata_file("emri_small.dcm")))
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    assert "10 frames (frame 6 shown)" in ev.summary
    ref = store.put(load_image(get_testdata_file("US1_UNCI.dcm")))
    ev = tools["describe_image"].invoke({"image_id": ref.id})
    assert ev.summary.startswith("US, 640x480 px")
    assert by_name(ev)["intensity_max"][0] <= 255


# ---------------------------------------------------------------------------------------------
# region_stats
# ---------------------------------------------------------------------------------------------
def test_region_stats_of_a_known_box() -> None:
    r = region_stats(synthetic(), BLOCK)
    assert r.box == BLOCK and not r.clipped
    assert (r.stats.mean, r.stats.std, r.stats.n_pixels) == (1000.0, 0.0, 1000)
    assert (r.width_px, r.height_px) == (50, 20)
    assert (r.width_mm, r.height_mm, r.area_mm2) == pytest.approx((25.0, 5.0, 125.0))


def test_region_stats_half_in_half_out_of_the_block() -> None:
    r = region_stats(synthetic(), [75, 20, 125, 40])  # half block, half background
    assert r.stats.mean == pytest.approx(500.0) and r.stats.median == pytest.approx(500.0)
    # fractional coordinates widen to whole pixels
    assert region_stats(synthetic(), [50.2, 20.7, 99.1, 39.9]).box == BLOCK


def test_region_stats_tool(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic())
    ev = tools["region_stats"].invoke({"image_id": ref.id, "box": list(BLOCK)})
    assert ev.boxes[0].xyxy == BLOCK and ev.score == 1.0
    m = by_name(ev)
    assert m["region_mean"] == (1000.0, "a.u.")
    assert m["region_width"] == (25.0, "mm") and m["region_area"] == (125.0, "mm2")
    assert "25.0x5.0 mm" in ev.summary

    clipped = tools["region_stats"].invoke({"image_id": ref.id, "box": [150, 80, 300, 200]})
    assert clipped.boxes[0].xyxy == (150, 80, 200, 100) and "clipped" in clipped.summary


def test_region_stats_without_spacing(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic(spacing=None))
    ev = tools["region_stats"].invoke({"image_id": ref.id, "box": list(BLOCK)})
    assert "spacing unknown" in ev.summary
    assert by_name(ev)["region_area"] == (1000, "px2")


@pytest.mark.parametrize(
    "box", [[300, 0, 400, 50], [-50, -50, -1, -1], [10, 10, 10, 20], [60, 10, 20, 30]]
)
def test_region_stats_bad_boxes_say_the_image_size(box: list[float]) -> None:
    with pytest.raises(ToolInputError, match="200x100 px"):
        region_stats(synthetic(), box)


def test_region_stats_schema_rejects_three_numbers(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic())
    with pytest.raises(ValidationError):
        tools["region_stats"].invoke({"image_id": ref.id, "box": [1, 2, 3]})


def test_region_stats_on_multiframe_uses_the_displayed_frame() -> None:
    img = load_image(get_testdata_file("emri_small.dcm"))
    r = region_stats(img, [10, 10, 30, 30])
    assert r.stats.mean == pytest.approx(img.pixels[5, 10:30, 10:30].mean())


def test_region_stats_on_colour_uses_luma() -> None:
    img = load_image(get_testdata_file("SC_rgb.dcm"))  # colour bands
    r = region_stats(img, [0, 0, 100, 100])
    luma = img.pixels.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert r.stats.mean == pytest.approx(luma.mean())


# ---------------------------------------------------------------------------------------------
# measure_distance
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("points", "mm", "px"),
    [
        ([0, 0, 40, 0], 20.0, 40.0),  # along x: 0.5 mm per column
        ([0, 0, 0, 40], 10.0, 40.0),  # along y: 0.25 mm per row
        ([10, 10, 40, 50], math.hypot(30 * 0.5, 40 * 0.25), 50.0),
        ([200, 100, 0, 0], math.hypot(100.0, 25.0), math.hypot(200, 100)),  # corner to corner
    ],
)
def test_distance_with_anisotropic_spacing(points: list[float], mm: float, px: float) -> None:
    d = measure_distance(synthetic(), points)
    assert d.length_mm == pytest.approx(mm) and d.length_px == pytest.approx(px)


def test_distance_tool(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic())
    ev = tools["measure_distance"].invoke({"image_id": ref.id, "points": [10, 10, 40, 50]})
    (m,) = ev.measurements
    assert m.unit == "mm" and m.value == pytest.approx(18.0278, abs=1e-3)
    assert m.line == (10, 10, 40, 50) and m.spacing_mm == SPACING
    assert ev.summary.startswith("distance 18.0 mm") and ev.score == 1.0


def test_distance_without_spacing_is_in_pixels(store: ImageStore, tools: dict) -> None:
    ref = store.put(synthetic(spacing=None))
    ev = tools["measure_distance"].invoke({"image_id": ref.id, "points": [10, 10, 40, 50]})
    (m,) = ev.measurements
    assert (m.value, m.unit, m.spacing_mm) == (50.0, "px", None)
    assert "spacing unknown" in ev.summary
    # the caller's points: it speaks to a distance or a size, not to a finding
    assert "distance" in ev.data["about"] and "where" not in ev.data["about"]


def test_distance_point_outside_the_image() -> None:
    with pytest.raises(ToolInputError, match="200x100 px"):
        measure_distance(synthetic(), [10, 10, 250, 50])
    with pytest.raises(ToolInputError, match="finite"):
        measure_distance(synthetic(), [10, 10, float("nan"), 50])


def test_distance_between_one_point_and_itself_is_refused() -> None:
    with pytest.raises(ToolInputError, match="the two points are the same"):
        measure_distance(synthetic(), [10, 10, 10, 10])


def test_distance_at_the_detector_is_flagged(store: ImageStore, tools: dict) -> None:
    img = synthetic()
    img.spacing_source = "ImagerPixelSpacing"
    ref = store.put(img)
    ev = tools["measure_distance"].invoke({"image_id": ref.id, "points": [0, 0, 40, 0]})
    assert "magnification not corrected" in ev.summary


# ---------------------------------------------------------------------------------------------
# The tool set
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("describe_image", {}),
        ("region_stats", {"box": [0, 0, 10, 10]}),
        ("measure_distance", {"points": [0, 0, 10, 10]}),
    ],
)
def test_unknown_image_id_is_retryable(tools: dict, name: str, args: dict) -> None:
    with pytest.raises(ToolInputError, match="unknown image id"):
        tools[name].invoke({"image_id": "img-000000000000", **args})


def test_tools_are_described_for_the_model(tools: dict) -> None:
    assert set(tools) == {"describe_image", "region_stats", "measure_distance"}
    for tool in tools.values():
        assert 40 < len(tool.description) < 400
    assert "mm" in tools["measure_distance"].description
    assert "[x0, y0, x1, y1]" in tools["region_stats"].description
