"""LiteMedSAM segmentation on synthetic phantoms with known ground truth (real model, CPU).

Phantoms: a bright disc and a bright ellipse of known size at a known spacing (0.5 mm/px) on a
dark noisy background, as a uint8 display. Tolerances: Dice >= 0.85 with the true shape, area
within 15 % and maximum diameter within 10 % of the true mm values. They leave room for the
model's 256-px input grid (one input pixel is 1.25 px of this 320-px image) and for the smooth
edge it predicts, and still catch a wrong scale, a wrong spacing or a box-to-mask mix-up.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.models.medsam import MedSamPredictor, get_predictor, preprocess
from tools.vision.segment import segment, segment_tools, validate_box, validate_points

pytestmark = pytest.mark.slow

SPACING = (0.5, 0.5)  # mm per pixel (row, col)
H, W = 256, 320
DISC = {"cx": 90.0, "cy": 110.0, "r": 40.0}  # px
ELLIPSE = {"cx": 225.0, "cy": 150.0, "a": 55.0, "b": 28.0}  # semi-axes along x, y (px)


def _shapes() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    disc = (xx - DISC["cx"]) ** 2 + (yy - DISC["cy"]) ** 2 <= DISC["r"] ** 2
    ell = ((xx - ELLIPSE["cx"]) / ELLIPSE["a"]) ** 2 + ((yy - ELLIPSE["cy"]) / ELLIPSE["b"]) ** 2 <= 1
    return disc, ell


def phantom_display(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(35, 8, (H, W))
    disc, ell = _shapes()
    img[disc] = rng.normal(200, 8, int(disc.sum()))
    img[ell] = rng.normal(170, 8, int(ell.sum()))
    return np.clip(img, 0, 255).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def predictor() -> MedSamPredictor:
    return get_predictor()


def test_preprocess_keeps_aspect_and_pads():
    prep = preprocess(phantom_display())
    assert tuple(prep.tensor.shape) == (1, 3, 256, 256)
    assert prep.resized == (205, 256)  # 256 * 256/320 = 204.8 -> 205 rows, padded below
    assert float(prep.tensor[0, :, 205:, :].abs().max()) == 0.0
    assert float(prep.tensor.min()) >= 0.0 and float(prep.tensor.max()) <= 1.0


def test_disc_and_ellipse_match_ground_truth_and_embedding_is_reused(predictor):
    display = phantom_display()
    disc, ell = _shapes()
    before = predictor.encoder_calls
    r = DISC["r"]
    box = [DISC["cx"] - r - 6, DISC["cy"] - r - 6, DISC["cx"] + r + 6, DISC["cy"] + r + 6]
    seg = segment(display, box, predictor, image_id="phantom-1", spacing_mm=SPACING)
    assert predictor.encoder_calls == before + 1
    assert seg.mask.shape == (H, W) and seg.mask.dtype == bool
    assert dice(seg.mask, disc) >= 0.85
    true_area = math.pi * r**2 * SPACING[0] * SPACING[1]  # mm2
    assert seg.area.unit == "mm2"
    assert abs(seg.area.value - true_area) / true_area <= 0.15
    assert seg.long_axis is not None and seg.long_axis.unit == "mm"
    assert abs(seg.long_axis.value - 2 * r * SPACING[1]) / (2 * r * SPACING[1]) <= 0.10
    assert 0.0 <= seg.score <= 1.0

    # A second box on the same image: decoder only, no new encoder run.
    a, b = ELLIPSE["a"], ELLIPSE["b"]
    box2 = [ELLIPSE["cx"] - a - 6, ELLIPSE["cy"] - b - 6, ELLIPSE["cx"] + a + 6,
            ELLIPSE["cy"] + b + 6]
    seg2 = segment(display, box2, predictor, image_id="phantom-1", spacing_mm=SPACING)
    assert predictor.encoder_calls == before + 1
    assert dice(seg2.mask, ell) >= 0.85
    true_area2 = math.pi * a * b * SPACING[0] * SPACING[1]
    assert abs(seg2.area.value - true_area2) / true_area2 <= 0.15
    assert seg2.long_axis is not None and seg2.short_axis is not None
    assert abs(seg2.long_axis.value - 2 * a * SPACING[1]) / (2 * a * SPACING[1]) <= 0.10
    assert abs(seg2.short_axis.value - 2 * b * SPACING[0]) / (2 * b * SPACING[0]) <= 0.15

    # Without a spacing the same object is measured in pixels.
    seg3 = segment(display, box, predictor, image_id="phantom-1", spacing_mm=None)
    assert seg3.area.unit == "px2" and seg3.long_axis is not None and seg3.long_axis.unit == "px"
    assert predictor.encoder_calls == before + 1


def test_embed_is_unit_length_and_cached(predictor):
    display = phantom_display(seed=3)
    before = predictor.encoder_calls
    e1 = predictor.embed(display, image_id="phantom-embed")
    e2 = predictor.embed(display, image_id="phantom-embed")
    assert e1.shape == (256,) and e1.dtype == np.float32
    assert abs(float(np.linalg.norm(e1)) - 1.0) < 1e-4
    np.testing.assert_array_equal(e1, e2)
    assert predictor.encoder_calls == before + 1


@pytest.mark.parametrize(
    "box",
    [
        [10, 10, 5, 50],  # inverted x
        [10, 10, 50, 10],  # empty height
        [400, 300, 500, 400],  # outside a 320x256 image
        [-50, -50, -10, -10],  # outside, negative
        [float("nan"), 0, 10, 10],
        [1, 2, 3],  # three numbers
    ],
)
def test_bad_boxes_raise_with_the_image_size(box):
    with pytest.raises(ToolInputError, match="320x256 px"):
        validate_box(box, (H, W))


def test_partly_outside_box_is_clipped():
    assert validate_box([-10, -5, 50, 60], (H, W)) == (0.0, 0.0, 50.0, 60.0)


def test_segment_tool_stores_mask_and_reports_mm(store, predictor):
    img = LoadedImage(pixels=phantom_display().astype(np.float32), display=phantom_display(),
                      spacing_mm=SPACING, spacing_source="PixelSpacing",
                      meta={"modality": "OT"}, source_format="synthetic")
    ref = store.put(img)
    [tool] = segment_tools(store, predictor)
    r = DISC["r"]
    box = [DISC["cx"] - r - 6, DISC["cy"] - r - 6, DISC["cx"] + r + 6, DISC["cy"] + r + 6]
    ev = tool.invoke({"image_id": ref.id, "box": box, "label": "disc"})
    assert ev.tool == "segment" and ev.status == "ok"
    assert ev.score is not None and 0 <= ev.score <= 1
    assert ev.boxes[0].xyxy == tuple(float(v) for v in box) and ev.boxes[0].label == "disc"
    mask = store.get_array(ev.mask_keys[0])
    assert mask.shape == (H, W) and mask.sum() > 0
    area = next(m for m in ev.measurements if m.name == "area")
    assert area.unit == "mm2" and area.spacing_mm == SPACING
    assert "mm2" in ev.summary
    with pytest.raises(ToolInputError, match="320x256 px"):
        tool.invoke({"image_id": ref.id, "box": [400, 300, 500, 400]})


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_point_prompts_on_the_box_only_model(predictor):
    """LiteMedSAM ignores points, so a point becomes boxes of growing size around it.

    Tolerance: the same Dice >= 0.85 as with a box; the mask's bounding box has IoU >= 0.85
    with the true shape's (a one-to-two-pixel edge error on a 80 px disc costs about 0.05).
    """
    display = phantom_display()
    disc, ell = _shapes()
    before = predictor.encoder_calls
    seg = segment(display, None, predictor, image_id="phantom-pts", spacing_mm=SPACING,
                  points=[[DISC["cx"], DISC["cy"]]])
    assert dice(seg.mask, disc) >= 0.85
    assert box_iou(_bbox(seg.mask), _bbox(disc)) >= 0.85
    # A positive point in the ellipse and a negative one in the disc: the ellipse.
    seg2 = segment(display, None, predictor, image_id="phantom-pts", spacing_mm=SPACING,
                   points=[[ELLIPSE["cx"], ELLIPSE["cy"]], [DISC["cx"], DISC["cy"]]],
                   point_labels=[1, 0])
    assert dice(seg2.mask, ell) >= 0.85
    assert not seg2.mask[int(DISC["cy"]), int(DISC["cx"])]
    assert predictor.encoder_calls == before + 1  # every candidate box reused one embedding


def test_box_segmentation_box_iou(predictor):
    display = phantom_display()
    disc, _ = _shapes()
    r = DISC["r"]
    box = [DISC["cx"] - r - 6, DISC["cy"] - r - 6, DISC["cx"] + r + 6, DISC["cy"] + r + 6]
    seg = segment(display, box, predictor, image_id="phantom-1", spacing_mm=SPACING)
    assert box_iou(_bbox(seg.mask), _bbox(disc)) >= 0.85


@pytest.mark.parametrize("points, labels, message", [
    ([[400, 10]], None, "outside the image"),
    ([[1, 2, 3]], None, "two numbers"),
    ([[10, 10]], [0], "at least one point"),
    ([[10, 10]], [1, 1], "per point"),
])
def test_bad_points_raise(points, labels, message):
    with pytest.raises(ToolInputError, match=message):
        validate_points(points, labels, (H, W))


def test_segment_tool_takes_points_and_names_its_mask_key(store, predictor):
    img = LoadedImage(pixels=phantom_display().astype(np.float32), display=phantom_display(),
                      meta={"modality": "OT"}, source_format="synthetic")
    ref = store.put(img)
    [tool] = segment_tools(store, predictor)
    ev = tool.invoke({"image_id": ref.id, "points": [[DISC["cx"], DISC["cy"]]]})
    assert ev.status == "ok" and ev.mask_keys[0].startswith("mask-")
    assert f"mask key {ev.mask_keys[0]}" in ev.summary
    area = next(m for m in ev.measurements if m.name == "area")
    assert area.unit == "px2" and area.spacing_mm is None and "px" in ev.summary
    with pytest.raises(ValueError, match="give a box"):
        tool.invoke({"image_id": ref.id})
