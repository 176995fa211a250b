"""The phantom generator produces the ground truth it claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from agent.evaluation.phantoms import (
    QUESTION_KINDS,
    equivalent_diameter_mm,
    make_phantom,
    phantom_suite,
    quadrant_of,
    side_of,
)


@pytest.mark.parametrize("kind", ["ct", "radiograph"])
def test_masks_sizes_and_boxes_match_the_lesions(kind):
    p = make_phantom(5, kind=kind, n_lesions=3)
    assert len(p.lesions) == 3 and p.image.spacing_mm == (p.spacing_mm, p.spacing_mm)
    masks = p.masks()
    for les, mask, box in zip(p.lesions, masks, p.boxes(), strict=True):
        # the mask is one disc of the stated diameter (within a pixel)
        assert ndimage.label(mask)[1] == 1
        d = equivalent_diameter_mm(mask, p.spacing_mm)
        assert abs(d - les.diameter_mm) <= p.spacing_mm
        x0, y0, x1, y1 = box
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        cx, cy = les.center_xy
        assert x0 <= cx <= x1 and y0 <= cy <= y1
    # lesions do not overlap, and each is brighter than its surroundings by its contrast
    assert not np.any(np.sum(masks, axis=0) > 1)
    px = p.image.pixels.astype(float)
    for les, mask in zip(p.lesions, masks, strict=True):
        ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(
            mask, iterations=3)
        inner = ndimage.binary_erosion(mask, iterations=1)
        measured = px[inner].mean() - np.median(px[ring])
        assert measured == pytest.approx(les.contrast, abs=3 * p.noise_sd + 0.35 * les.contrast)


def test_images_are_what_they_say():
    ct = make_phantom(1, kind="ct")
    assert ct.image.meta["modality"] == "CT" and ct.image.meta["units"] == "HU"
    outside = ct.image.pixels[:3, :3].mean()
    assert outside < -900  # air around the body, in HU
    dx = make_phantom(1, kind="radiograph")
    assert dx.image.meta["view_position"] == "PA"
    assert dx.image.display.dtype == np.uint8 and dx.image.display.shape == (192, 192)


def test_quadrant_and_side_follow_radiological_convention():
    assert quadrant_of((10, 10), (100, 100)) == "upper left"
    assert quadrant_of((90, 60), (100, 100)) == "lower right"
    assert side_of((10, 50), (100, 100)) == "right"  # image left = patient's right
    assert side_of((90, 50), (100, 100)) == "left"


def test_suite_answers_match_its_phantoms():
    items = phantom_suite(20, seed=3)
    assert [it.question_kind for it in items[:5]] == list(QUESTION_KINDS)
    for it in items:
        p = it.phantom
        if it.question_kind == "presence":
            assert it.answer == ("yes" if p.lesions else "no")
        elif it.question_kind == "count":
            assert it.answer == str(len(p.lesions))
        elif it.question_kind == "size":
            assert float(it.answer) == max(les.diameter_mm for les in p.lesions)
            assert it.value_mm == float(it.answer) and it.tolerance_mm >= 2.0
        elif it.question_kind == "location":
            assert it.answer == quadrant_of(p.lesions[0].center_xy, p.shape)
            assert it.answer in it.options
        else:
            assert it.answer == side_of(p.lesions[0].center_xy, p.shape)
        assert len(it.boxes) == (1 if it.question_kind == "size" else len(p.lesions))


def test_suite_is_deterministic_and_prefix_stable():
    a, b = phantom_suite(6, seed=2), phantom_suite(9, seed=2)
    for x, y in zip(a, b, strict=False):
        assert x.id == y.id and x.answer == y.answer
        assert np.array_equal(x.phantom.image.pixels, y.phantom.image.pixels)
    assert phantom_suite(3, seed=4)[0].phantom.image.content_id() != a[0].phantom.image.content_id()


def test_impossible_request_is_refused():
    with pytest.raises(ValueError, match="could not place"):
        make_phantom(0, n_lesions=40, size=64)
