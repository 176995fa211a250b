"""The real chest radiograph both lung tests use (pydicom-data's RG1_UNCI.dcm), loaded once
per test module: the film, a copy with an assumed spacing, the lungs found and measured."""

from __future__ import annotations

import dataclasses

import pytest
from pydicom.data import get_testdata_file

from tools.evidence import Evidence
from tools.ingest.loader import load_image
from tools.models.medsam import get_predictor
from tools.store import ImageStore
from tools.vision.find import find_tools
from tools.vision.measure import measure_tools

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
    tool = {t.name: t for t in measure_tools(store, get_predictor())}["measure_lungs"]
    return tool.invoke({"image_id": image_id})
