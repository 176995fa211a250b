"""Measuring the lungs on a real chest radiograph (pydicom-data's RG1_UNCI.dcm).

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

import numpy as np
import pytest

from tests.tools.vision.conftest import ASSUMED_SPACING
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.models.medsam import get_predictor
from tools.overlay import draw_evidence, to_rgb
from tools.vision.measure import measure_tools

pytestmark = pytest.mark.slow


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


def _ct_phantom(units: str = "HU") -> tuple[LoadedImage, np.ndarray]:
    """A 128x128 CT slice at 0.7 mm: air (-1000 HU) around a 40 HU disc of radius 20 px,
    Gaussian noise of SD 5 HU."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    disc = (xx - 64) ** 2 + (yy - 60) ** 2 <= 20 ** 2
    hu = np.where(disc, 40.0, -1000.0) + rng.normal(0, 5, (128, 128))
    display = np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)
    img = LoadedImage(pixels=hu.astype(np.float32), display=display, spacing_mm=(0.7, 0.7),
                      spacing_source="PixelSpacing", meta={"modality": "CT", "units": units},
                      source_format="synthetic")
    return img, disc


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
    tool = {t.name: t for t in measure_tools(store, get_predictor())}["measure_lungs"]
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


def test_cardiothoracic_ratio_on_a_phantom():
    from tools.vision.measure import cardiothoracic_ratio

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
    from tools.vision.measure import horizontal_extent, mask_area, mask_axes

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


# ---- measure: a stored mask by key (lesion axes, HU statistics) ------------------------------
def test_measure_a_found_lung_by_mask_key(rg1, found):
    store, img, image_id, _ = rg1
    tools = {t.name: t for t in measure_tools(store, get_predictor())}
    key = found.mask_keys[0]
    assert key in found.summary  # the planner can read the key it must pass
    ev = tools["measure"].invoke({"image_id": image_id, "mask_key": key})
    by = {m.name: m for m in ev.measurements}
    mask = store.get_array(key).astype(bool)
    assert by["area"].value == pytest.approx(mask.sum()) and by["area"].unit == "px2"
    assert by["long_axis"].unit == "px" and by["long_axis"].line is not None
    assert by["short_axis"].value < by["long_axis"].value
    assert "hu_mean" not in by and "not CT" in ev.summary
    assert "pixel spacing unknown" in ev.summary
    with pytest.raises(ToolInputError, match="unknown array key"):
        tools["measure"].invoke({"image_id": image_id, "mask_key": "mask-000000000000"})
    small = store.put_array(np.ones((10, 10), np.uint8), key="mask-small")
    with pytest.raises(ToolInputError, match="made on another image"):
        tools["measure"].invoke({"image_id": image_id, "mask_key": small})


def test_hu_statistics_inside_a_ct_mask(store):
    """Tolerances: the mean of ~1,260 samples of SD 5 HU within 1 HU of 40 (about 7 standard
    errors); the SD within 0.5 HU of 5; the area exact (pixel count x 0.49 mm²)."""
    img, disc = _ct_phantom()
    ref = store.put(img)
    key = store.put_array(disc.astype(np.uint8), key="mask-ctdisc")
    tools = {t.name: t for t in measure_tools(store, get_predictor())}
    ev = tools["measure"].invoke({"image_id": ref.id, "mask_key": key})
    by = {m.name: m for m in ev.measurements}
    assert by["hu_mean"].unit == "HU" and abs(by["hu_mean"].value - 40) <= 1.0
    assert abs(by["hu_std"].value - 5) <= 0.5
    assert by["hu_min"].value < 40 < by["hu_max"].value < 80
    assert by["area"].unit == "mm2" and by["area"].spacing_mm == (0.7, 0.7)
    assert by["area"].value == pytest.approx(disc.sum() * 0.49)
    # Maximum diameter from pixel corners: a digitised circle's corners reach up to ~0.7 px
    # beyond it at each end of a diagonal, so within 1.5 px (1.05 mm) of 40 px.
    assert by["long_axis"].value == pytest.approx(40 * 0.7, abs=1.5 * 0.7)
    assert "PixelSpacing" in ev.summary and "HU mean" in ev.summary


def test_no_hu_statistics_when_ct_pixels_are_not_hu():
    from tools.vision.measure import measure_mask

    img, disc = _ct_phantom(units="a.u.")
    mm = measure_mask(img, disc)
    assert mm.hu is None and "not in HU" in mm.hu_note


def test_lesion_axes_of_an_ellipse_with_anisotropic_spacing():
    """An ellipse 60 x 20 px at (row 0.5, col 0.25) mm: 15 x 10 mm.

    Tolerances: long axis 3 %; short axis within 1.5 px (0.75 mm): the long axis runs between
    pixel corners and so tilts by a few degrees, which widens the breadth measured across it.
    """
    from tools.vision.measure import mask_axes

    yy, xx = np.mgrid[0:100, 0:120] + 0.5
    ell = ((xx - 60) / 30) ** 2 + ((yy - 50) / 10) ** 2 <= 1
    axes = mask_axes(ell, (0.5, 0.25))
    assert axes.long.value == pytest.approx(15.0, rel=0.03) and axes.long.unit == "mm"
    assert axes.short.value == pytest.approx(10.0, abs=1.5 * 0.5)


def test_volume_and_hu_of_a_3d_mask_on_a_ct_volume(store):
    """An ellipsoid on a CT volume of 0.8 mm pixels and 2 mm between slices: semi-axes 10 px
    (8 mm) in-plane and 5 slices (10 mm) through-plane, 30 HU in -1000 HU air, noise SD 4 HU.

    Tolerances: the voxelised volume within 5 % of 4/3 pi 8 x 8 x 10 mm³ (a coarse 2 mm slice
    grid) and exactly voxels x 1.28 mm³; HU mean within 1 HU of 30; area and axes are those of
    the largest slice (the middle one).
    """
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[0:11, 0:40, 0:40]
    zz, yy, xx = zz + 0.0, yy + 0.5, xx + 0.5
    ell = ((xx - 20) / 10) ** 2 + ((yy - 20) / 10) ** 2 + ((zz - 5) * 2.0 / 10.0) ** 2 <= 1
    hu = np.where(ell, 30.0, -1000.0) + rng.normal(0, 4, ell.shape)
    display = np.clip((hu[5] + 160) / 400 * 255, 0, 255).astype(np.uint8)
    vol = LoadedImage(pixels=hu.astype(np.float32), display=display, spacing_mm=(0.8, 0.8),
                      spacing_source="PixelSpacing",
                      meta={"modality": "CT", "units": "HU", "slice_spacing_mm": 2.0},
                      source_format="synthetic")
    ref = store.put(vol)
    key = store.put_array(ell.astype(np.uint8), key="mask-sphere")
    tools = {t.name: t for t in measure_tools(store, get_predictor())}
    ev = tools["measure"].invoke({"image_id": ref.id, "mask_key": key})
    by = {m.name: m for m in ev.measurements}
    true = 4 / 3 * np.pi * 8 * 8 * 10  # mm3
    assert by["volume"].unit == "mm3" and abs(by["volume"].value - true) / true <= 0.05
    assert by["volume"].value == pytest.approx(ell.sum() * 0.8 * 0.8 * 2.0)
    assert abs(by["hu_mean"].value - 30) <= 1.0 and by["hu_mean"].unit == "HU"
    assert by["area"].value == pytest.approx(ell[5].sum() * 0.64)
    assert by["long_axis"].line is None  # not drawn on a slice it may not be on
    assert "slice 5" in ev.summary and "slice spacing 2 mm" in ev.summary
    from tools.vision.measure import mask_volume

    assert mask_volume(ell, (0.8, 0.8), None).unit == "voxels"
