"""Finding the lungs on a real chest radiograph (pydicom-data's RG1_UNCI.dcm), and text.

Both lungs on their own sides, one-side targets, synonyms, refusals on images that cannot show
lungs (CT, MR, an extremity film) or targets nothing offline can ground, and burned-in text
boxes. The fixtures (the film, the lungs found) are in this folder's conftest.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tools.errors import ToolInputError
from tools.ingest.loader import load_image
from tools.models.medsam import get_predictor
from tools.vision.find import find_tools, normalise_target

pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("target", ["heart", "nodule in the left upper lobe", "aorta"])
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
    from tools.vision.find import find_lungs

    with pytest.raises(ToolInputError, match="frontal chest radiograph"):
        find_lungs(np.zeros((64, 64), np.uint8), get_predictor(), None, {"modality": "CT"})


@pytest.mark.parametrize("meta, message", [
    ({"modality": "MR"}, "this image is MR"),
    ({"modality": "CR", "body_part": "EXTREMITY"}, "of the EXTREMITY"),
])
def test_lungs_refused_on_images_that_cannot_show_them(meta, message):
    from tools.vision.find import find_lungs

    with pytest.raises(ToolInputError, match=message):
        find_lungs(np.zeros((64, 64), np.uint8), get_predictor(), None, meta)


def test_find_text_boxes_burned_in_text_without_quoting_identifiers(store):
    """pydicom-data's ultrasound frame carries burned-in text (institution, date, settings)."""
    img = load_image(get_testdata_file("US1_UNCI.dcm"))
    ref = store.put(img)
    [find] = find_tools(store, get_predictor())
    ev = find.invoke({"image_id": ref.id, "target": "burned-in text"})
    h, w = img.display.shape[:2]
    assert ev.tool == "find" and ev.status == "ok" and ev.data["target"] == "text"
    assert len(ev.boxes) >= 3 and ev.data["regions"] == len(ev.boxes)
    for b in ev.boxes:
        x0, y0, x1, y1 = b.xyxy
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    quoted = [b.label for b in ev.boxes if b.label]
    assert len(quoted) == len(ev.boxes) - ev.data["possible_identifiers"]
