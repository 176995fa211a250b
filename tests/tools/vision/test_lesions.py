"""The focal-lesion detector on phantoms of known truth, and its tool wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from agent.evaluation.metrics import box_iou
from agent.evaluation.phantoms import make_phantom, quadrant_of, side_of
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.vision.lesions import detect_lesions, lesion_tools

CLEAR = {"cnr": (6.0, 9.0), "diameter_mm": (8.0, 20.0)}


@pytest.mark.parametrize("kind", ["ct", "radiograph"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_clear_lesions_with_size_position_and_box(kind, seed):
    p = make_phantom(seed, kind=kind, n_lesions=2, **CLEAR)
    rep = detect_lesions(p.image)
    assert rep.count == 2
    for det in rep.detections:  # match each detection to the nearest true lesion
        i = min(range(2), key=lambda j: np.hypot(*np.subtract(det.center_xy,
                                                               p.lesions[j].center_xy)))
        les, box = p.lesions[i], p.boxes()[i]
        assert det.diameter == pytest.approx(les.diameter_mm, abs=1.5)
        assert box_iou(det.box, box) > 0.6
        assert det.quadrant == quadrant_of(les.center_xy, p.shape)
        assert det.patient_side == side_of(les.center_xy, p.shape)
        assert det.p_real > 0.9


@pytest.mark.parametrize("kind", ["ct", "radiograph"])
def test_no_lesion_no_detection(kind):
    for seed in range(3):
        rep = detect_lesions(make_phantom(seed, kind=kind, n_lesions=0).image)
        assert rep.count == 0


def test_monochrome1_is_inverted_and_missing_spacing_gives_pixels():
    p = make_phantom(4, kind="radiograph", n_lesions=1, **CLEAR)
    img = p.image
    inverted = LoadedImage(pixels=-img.pixels, display=255 - img.display, spacing_mm=None,
                           meta={**img.meta, "photometric": "MONOCHROME1"})
    rep = detect_lesions(inverted, min_diameter_mm=3, max_diameter_mm=40)
    assert rep.count == 1 and rep.detections[0].unit == "px"
    d_px = p.lesions[0].diameter_mm / p.spacing_mm
    assert rep.detections[0].diameter == pytest.approx(d_px, rel=0.15)


def test_bad_size_range_is_a_retryable_error():
    with pytest.raises(ToolInputError, match="min_diameter_mm < max_diameter_mm"):
        detect_lesions(make_phantom(0).image, min_diameter_mm=10, max_diameter_mm=5)


def test_tool_returns_evidence_with_boxes_counts_and_assertion(store):
    p = make_phantom(7, kind="ct", n_lesions=1, **CLEAR)
    ref = store.put(p.image)
    (tool,) = lesion_tools(store)
    ev = tool.invoke({"image_id": ref.id})
    assert ev.tool == "detect_lesions" and ev.status == "ok"
    assert "1 focal lesion found" in ev.summary and "mm diameter" in ev.summary
    assert [m.value for m in ev.measurements if m.name == "lesion_count"] == [1]
    assert ev.assertions[0].present and 0.5 < (ev.score or 0) <= 1
    assert len(ev.boxes) == 1 and box_iou(ev.boxes[0].xyxy, p.boxes()[0]) > 0.6
    blank = store.put(make_phantom(8, kind="ct", n_lesions=0).image)
    ev0 = tool.invoke({"image_id": blank.id})
    assert "0 lesions" in ev0.summary and not ev0.assertions[0].present and not ev0.boxes


def test_detection_accuracy_on_a_suite():
    """Over varied phantoms (subtle ones included) the count is right most of the time."""
    right = 0
    for seed in range(12):
        p = make_phantom(100 + seed, kind="ct" if seed % 2 else "radiograph",
                         n_lesions=seed % 3)
        right += detect_lesions(p.image).count == len(p.lesions)
    assert right >= 9
    assert np.isfinite(detect_lesions(make_phantom(1).image).noise_sd)
