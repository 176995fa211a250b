"""Finding and measuring the lungs on a real chest radiograph (pydicom-data's RG1_UNCI.dcm).

RG1_UNCI is a PA computed radiograph, 1841x1955 px, whose PixelSpacing is 0\\0 (unknown), so the
tools measure it in px / px². Checks:

* each lung's mask covers 5-25 % of the film: on a PA chest film the lung fields fill roughly
  half the frame between them, so one lung far outside that band is a failed segmentation
  (a sliver, or a mask that ran into the abdomen or the other side);
* on a copy with an assumed 0.143 mm pixel (a common flat-panel / CR detector pitch) each lung
  is 6,000-30,000 mm² (60-300 cm²) and both together 15,000-50,000 mm²: the projected area of
  one adult lung on a PA film is of the order of 100-200 cm², widened because the true pitch
  of this film is not known;
* the cardiothoracic ratio is physiologically possible (0.3-0.7);
* the overlay changes the pixels under the masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tools.errors import ToolInputError
from tools.evidence import Evidence
from tools.find import find_tools, normalise_target
from tools.loader import load_image
from tools.measure import measure_tools
from tools.medsam import get_predictor
from tools.overlay import draw_evidence, to_rgb
from tools.store import ImageStore

pytestmark = pytest.mark.slow

ASSUMED_SPACING = (0.143, 0.143)


@pytest.fixture(scope="module")
def rg1(tmp_path_factory):
    store = ImageStore(tmp_path_factory.mktemp("rg1-store"))
    img = load_image(get_testdata_file("RG1_UNCI.dcm"))
    assert img.spacing_mm is None  # the premise of the px² checks below
    ref = store.put(img)
    # The same film with an assumed spacing; one pixel value changed so it gets its own id.
    pixels = img.pixels.copy()
    pixels[0, 0] += 1
    calibrated = dataclasses.replace(img, pixels=pixels, spacing_mm=ASSUMED_SPACING,
                                     spacing_source="PixelSpacing")
    cref = store.put(calibrated)
    return store, img, ref.id, cref.id


@pytest.fixture(scope="module")
def found(rg1) -> Evidence:
    store, _img, image_id, _ = rg1
    [find] = find_tools(store, get_predictor())
    return find.invoke({"image_id": image_id, "target": "lungs"})


@pytest.fixture(scope="module")
def measured(rg1) -> Evidence:
    store, _img, image_id, _ = rg1
    [tool] = measure_tools(store, get_predictor())
    return tool.invoke({"image_id": image_id})


def test_both_lungs_found_on_their_sides(rg1, found):
    store, img, _, _ = rg1
    h, w = img.display.shape
    assert found.status == "ok" and found.tool == "find"
    assert [b.label for b in found.boxes] == ["right lung", "left lung"]
    right, left = found.boxes
    # Patient's right lung on the image's left on this PA film (PatientOrientation L\F).
    assert (right.xyxy[0] + right.xyxy[2]) / 2 < w / 2 < (left.xyxy[0] + left.xyxy[2]) / 2
    assert "PatientOrientation" in found.summary
    for key in found.mask_keys:
        frac = store.get_array(key).astype(bool).mean()
        assert 0.05 <= frac <= 0.25, frac
    assert found.score is not None and found.score >= 0.6


def test_single_side_target(rg1):
    store, _img, image_id, _ = rg1
    [find] = find_tools(store, get_predictor())
    ev = find.invoke({"image_id": image_id, "target": "Left Lung"})
    assert [b.label for b in ev.boxes] == ["left lung"] and len(ev.mask_keys) == 1


def test_measure_lungs_in_px_when_spacing_is_unknown(rg1, measured):
    _store, img, _, _ = rg1
    h, w = img.display.shape
    by = {m.name: m for m in measured.measurements}
    for side in ("right", "left"):
        m = by[f"{side}_lung_area"]
        assert m.unit == "px2" and m.spacing_mm is None
        assert 0.05 <= m.value / (h * w) <= 0.25
    assert by["total_lung_area"].unit == "px2"
    ctr = by["cardiothoracic_ratio"]
    assert ctr.unit == "ratio" and 0.3 <= ctr.value <= 0.7
    assert by["heart_width"].line is not None and by["thorax_width"].line is not None
    assert by["heart_width"].value < by["thorax_width"].value
    assert "pixel spacing unknown" in measured.summary and "px2" in measured.summary


def test_measure_lungs_in_mm2_with_an_assumed_spacing(rg1, measured):
    store, _img, _, cal_id = rg1
    [tool] = measure_tools(store, get_predictor())
    ev = tool.invoke({"image_id": cal_id})
    by = {m.name: m for m in ev.measurements}
    for side in ("right", "left"):
        m = by[f"{side}_lung_area"]
        assert m.unit == "mm2" and m.spacing_mm == ASSUMED_SPACING
        assert 6_000 <= m.value <= 30_000, m.value
    assert 15_000 <= by["total_lung_area"].value <= 50_000
    assert by["thorax_width"].unit == "mm"
    px = {m.name: m for m in measured.measurements}
    # A ratio does not depend on the spacing.
    assert by["cardiothoracic_ratio"].value == pytest.approx(px["cardiothoracic_ratio"].value,
                                                             abs=0.02)


def test_overlay_draws_the_masks(rg1, measured):
    store, img, image_id, _ = rg1
    out = draw_evidence(img.display, [measured], store, image_id=image_id)
    base = to_rgb(img.display)
    assert out.shape == base.shape and out.dtype == np.uint8
    changed = (out != base).any(axis=2)
    for key in measured.mask_keys:
        mask = store.get_array(key).astype(bool)
        assert changed[mask].mean() > 0.95
    # Far from every mask, box and line the film is untouched (bottom-left corner).
    assert not changed[-50:, :50].any()


@pytest.mark.parametrize("target", ["heart", "nodule in the left upper lobe", "text"])
def test_ungroundable_targets_are_refused(rg1, target):
    store, _img, image_id, _ = rg1
    [find] = find_tools(store, get_predictor())
    with pytest.raises(ToolInputError) as err:
        find.invoke({"image_id": image_id, "target": target})
    assert str(err.value).startswith(f"'{target}' cannot be grounded offline; groundable: lungs")


def test_target_synonyms():
    assert normalise_target(" Both  Lungs ") == "lungs"
    assert normalise_target("right_lung") == "right lung"


def test_lungs_refused_on_a_ct(rg1):
    from tools.find import find_lungs

    with pytest.raises(ToolInputError, match="frontal chest radiograph"):
        find_lungs(np.zeros((64, 64), np.uint8), get_predictor(), None, {"modality": "CT"})


# ---- pure measurement functions on synthetic masks (exact answers) ---------------------------
def _lungs_phantom() -> tuple[np.ndarray, np.ndarray]:
    """Two 'lungs' 40 px wide, 20 px apart over their lower half and 60 px apart near the
    middle of the lower half (a heart bulge), on a 200x200 grid."""
    left = np.zeros((200, 200), bool)
    right = np.zeros((200, 200), bool)
    left[20:180, 40:80] = True
    right[20:180, 100:140] = True
    left[120:140, 60:80] = False  # heart bulge: inner borders at x=60 and x=120
    right[120:140, 100:120] = False
    return left, right


def test_cardiothoracic_ratio_on_a_phantom():
    from tools.measure import cardiothoracic_ratio

    left, right = _lungs_phantom()
    ctr = cardiothoracic_ratio(left, right, spacing_mm=(0.5, 0.25))
    assert ctr.thorax.value == pytest.approx(100 * 0.25) and ctr.thorax.unit == "mm"
    assert ctr.heart.value == pytest.approx(60 * 0.25)
    assert ctr.ratio == pytest.approx(0.6)
    assert ctr.heart.line is not None and ctr.heart.line[0] == 60 and ctr.heart.line[2] == 120
    assert 120 <= ctr.heart.line[1] < 140
    with pytest.raises(ToolInputError, match="side by side"):
        cardiothoracic_ratio(right, left)


def test_area_axes_and_extent_with_anisotropic_spacing():
    from tools.measure import horizontal_extent, mask_area, mask_axes

    m = np.zeros((100, 100), bool)
    m[10:30, 20:80] = True  # 60 px wide, 20 px tall
    assert mask_area(m, (0.5, 0.25)).value == pytest.approx(1200 * 0.125)
    assert mask_area(m, None).unit == "px2"
    ext = horizontal_extent(m, (0.5, 0.25))
    assert ext.value == pytest.approx(15.0) and ext.unit == "mm"
    axes = mask_axes(m, (0.5, 0.25))
    assert axes.long.value == pytest.approx(np.hypot(15.0, 10.0))  # the diagonal, in mm
    assert axes.long.unit == "mm"
    assert mask_axes(m, None).long.value == pytest.approx(np.hypot(60, 20))
    with pytest.raises(ToolInputError, match="empty"):
        mask_area(np.zeros((5, 5), bool), None)
