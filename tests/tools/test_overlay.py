"""``draw_evidence`` on synthetic evidence: exact colours of boxes, masks and lines."""

from __future__ import annotations

import numpy as np

from tools.evidence import Box, Evidence, Measurement
from tools.overlay import MASK_ALPHA, PALETTE, draw_evidence, to_rgb


def _grey(h: int = 100, w: int = 120, value: int = 50) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def test_mask_is_blended_and_box_outlined_in_the_same_colour(store):
    display = _grey()
    mask = np.zeros((100, 120), np.uint8)
    mask[60:80, 70:100] = 1
    key = store.put_array(mask)
    ev = Evidence(tool="t", summary="s", mask_keys=[key],
                  boxes=[Box(xyxy=(10, 20, 50, 40), label="")])
    out = draw_evidence(display, [ev], store)
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    colour = np.array(PALETTE[0], float)
    blended = np.rint((1 - MASK_ALPHA) * 50 + MASK_ALPHA * colour).astype(np.uint8)
    np.testing.assert_array_equal(out[70, 85], blended)
    np.testing.assert_array_equal(out[60, 70], blended)
    # Box outline (1 px wide on a small image): top-left corner and the exclusive x1 - 1 edge.
    np.testing.assert_array_equal(out[20, 10], PALETTE[0])
    np.testing.assert_array_equal(out[30, 49], PALETTE[0])
    # Inside the box and outside the mask nothing changes.
    np.testing.assert_array_equal(out[30, 30], [50, 50, 50])
    np.testing.assert_array_equal(out[5, 115], [50, 50, 50])


def test_measurement_line_and_skipped_items(store):
    display = _grey()
    line = Measurement(name="d", value=3.0, unit="mm", line=(5, 90, 115, 90))
    ok = Evidence(tool="t", summary="s", image_id="img-000000000000", measurements=[line])
    failed = Evidence(tool="t", summary="s", status="error",
                      boxes=[Box(xyxy=(0, 0, 120, 100))])
    other = Evidence(tool="t", summary="s", image_id="img-111111111111",
                     boxes=[Box(xyxy=(0, 0, 120, 100))])
    out = draw_evidence(display, [failed, other, ok], store, image_id="img-000000000000")
    np.testing.assert_array_equal(out[90, 20], PALETTE[0])
    np.testing.assert_array_equal(out[90, 110], PALETTE[0])
    # The failed and foreign items' full-image boxes were not drawn.
    np.testing.assert_array_equal(out[0, 60], [50, 50, 50])
    np.testing.assert_array_equal(out[50, 0], [50, 50, 50])


def test_mask_of_another_shape_is_skipped_and_colour_input_kept(store):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 2] = 200
    key = store.put_array(np.ones((10, 10), np.uint8))
    out = draw_evidence(rgb, [Evidence(tool="t", summary="s", mask_keys=[key])], store)
    np.testing.assert_array_equal(out, to_rgb(rgb))
