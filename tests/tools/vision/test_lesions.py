"""The focal-lesion detector on phantoms of known truth, and its tool wrapper: large lesions,
and its domain (phantoms: a real radiograph and an implausible count are flagged)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.evaluation.metrics import box_iou
from agent.evaluation.phantoms import make_phantom, quadrant_of, side_of
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.vision.lesions import (
    Detection,
    LesionReport,
    detect_lesions,
    lesion_evidence,
    lesion_tools,
)

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


def _disc_image(size: int, diameter_mm: float, spacing_mm: float) -> LoadedImage:
    """A bright disc (contrast 60, noise sd 8) centred on a flat background, as a CT."""
    yy, xx = np.mgrid[:size, :size]
    r = diameter_mm / 2 / spacing_mm
    disc = ((xx + 0.5 - size / 2) ** 2 + (yy + 0.5 - size / 2) ** 2) <= r * r
    pixels = 40.0 + 60.0 * disc + np.random.default_rng(0).normal(0.0, 8.0, (size, size))
    display = np.clip((pixels + 10) * 2, 0, 255).astype(np.uint8)
    return LoadedImage(pixels=pixels.astype(np.float32), display=display,
                       spacing_mm=(spacing_mm, spacing_mm), meta={"modality": "CT"},
                       source_format="synthetic")


@pytest.mark.parametrize("size, diameter_mm", [(256, 50.0), (512, 50.0), (512, 30.0)])
def test_a_large_disc_is_found(size, diameter_mm):
    """Issue 14: a 50 mm disc at 0.3 mm spacing (167 px across) was missed."""
    rep = detect_lesions(_disc_image(size, diameter_mm, 0.3))
    assert rep.count == 1 and rep.detections[0].diameter == pytest.approx(diameter_mm, abs=1.5)
    x0, y0, x1, y1 = rep.detections[0].box
    assert x1 - x0 == pytest.approx(diameter_mm / 0.3, abs=4)


def test_assertion_carries_the_count_and_the_one_side(store):
    p = make_phantom(0, kind="ct", n_lesions=2, **CLEAR)
    ev = lesion_tools(store)[0].invoke({"image_id": store.put(p.image).id})
    [a] = ev.assertions
    sides = {side_of(les.center_xy, p.shape) for les in p.lesions}
    assert a.present and a.count == 2
    assert a.side == (sides.pop() if len(sides) == 1 else None)
    assert "out_of_domain" not in ev.data and ev.data["findings"] is True


def test_a_real_chest_radiograph_is_outside_the_detectors_domain(store):
    """pydicom-data's RG1_UNCI: a clinical film; the phantom-validated blobs are not findings."""
    from pydicom.data import get_testdata_file

    from tools.ingest.loader import load_image

    ref = store.put(load_image(get_testdata_file("RG1_UNCI.dcm")))
    ev = lesion_tools(store)[0].invoke({"image_id": ref.id})
    assert ev.status == "ok" and ev.data["out_of_domain"] is True
    assert "synthetic" in ev.data["domain_note"] and ev.data["findings"] is False
    assert ev.summary.startswith("Outside what this tool was validated for (medloop's synthetic")
    assert "focal lesion found" not in ev.summary and "not lesion findings" in ev.summary
    assert ev.assertions == [] and (ev.score or 0) <= 0.25
    assert not any(m.name == "lesion_count" for m in ev.measurements)


def test_an_implausible_count_is_flagged_even_on_a_phantom():
    p = make_phantom(0, kind="ct", n_lesions=0)
    dets = [Detection(box=(i, i, i + 4, i + 4), center_xy=(i + 2.0, i + 2.0), diameter=4.0,
                      unit="mm", area_px=12, contrast=9.0, z=20.0, p_real=1.0,
                      quadrant="upper left", patient_side="right") for i in range(0, 76 * 2, 2)]
    rep = LesionReport(detections=dets, noise_sd=1.0, strongest_rejected_z=0.0, z_min=6.0,
                       spacing_mm=p.spacing_mm, score=0.99)
    ev = lesion_evidence(rep, "img-000000000000")
    assert ev.data["out_of_domain"] is True and "76 detections" in ev.data["domain_note"]
    assert ev.assertions == [] and ev.score == pytest.approx(0.99 * 0.25)
    assert ev.summary.startswith("Outside what this tool was validated for")
    assert "76 bright focal spots" in ev.summary and "(5 of 76 listed)" in ev.summary
    assert len(ev.boxes) == 5 and ev.data["count"] == 76


def test_flagged_evidence_cannot_hold_an_answer_to_its_blobs(store):
    """The meaning check holds an answer to in-domain lesion evidence only: the same count on
    a phantom contradicts "no lesion"; flagged out of domain, it neither supports nor refutes."""
    from agent.trust.agreement import answer_conflicts

    p = make_phantom(7, kind="ct", n_lesions=1, **CLEAR)
    inside = lesion_tools(store)[0].invoke({"image_id": store.put(p.image).id})
    inside.id = "E1"
    answer = "No, there is no lesion."
    assert answer_conflicts(answer, [(answer, [inside])], "Is there a lesion?")
    flagged = lesion_evidence(LesionReport(
        detections=[Detection(box=(i, i, i + 4, i + 4), center_xy=(i + 2.0, i + 2.0),
                              diameter=4.0, unit="mm", area_px=12, contrast=9.0, z=20.0,
                              p_real=1.0, quadrant="upper left", patient_side=None)
                    for i in range(0, 40, 5)],
        noise_sd=1.0, strongest_rejected_z=0.0, z_min=6.0, spacing_mm=1.0, score=0.9),
        "img-000000000000")
    flagged.id = "E2"
    assert flagged.data["out_of_domain"]
    assert answer_conflicts(answer, [(answer, [flagged])], "Is there a lesion?") == []
