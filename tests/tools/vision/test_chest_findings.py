"""The chest findings ``classify`` (TorchXRayVision): offered by configuration, its evidence,
its heat map and its refusals.

Architecture-exact random DenseNet weights sit where torchxrayvision looks (a temp HOME); the
tool is built from its ``ToolSpec`` over ``VisionConfig(classifier="xrv:...")`` exactly as the
agent builds it, so the model loads by name on the first call.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from agent.planner.toolset import offered_specs, tool_specs
from tools.errors import ToolInputError
from tools.ingest.loader import load_image
from tools.models.registry import unload
from tools.models.xrv import write_random_weights
from tools.models.xrv_catalog import WEIGHTS
from tools.spec import ToolDeps, VisionConfig
from tools.vision.chest_findings import TOOLS

pytestmark = pytest.mark.slow

NAME = "densenet121-res224-all"
CONFIG = VisionConfig(classifier=f"xrv:{NAME}", device="cpu")


@pytest.fixture(scope="module")
def xrv_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("xrv-home")
    write_random_weights(NAME, home / ".torchxrayvision" / "models_data")
    return home


@pytest.fixture(autouse=True)
def _home(xrv_home, monkeypatch):
    monkeypatch.setenv("HOME", str(xrv_home))
    unload(f"xrv:{NAME}:cpu")
    yield
    unload(f"xrv:{NAME}:cpu")


@pytest.fixture
def tool(store):
    [spec] = TOOLS
    return spec.tool(ToolDeps(store, CONFIG))


def test_configuring_xrv_offers_it_as_classify_over_the_knn_one(store):
    deps = ToolDeps(store, CONFIG)
    offered = {s.name: s for s in offered_specs(tool_specs(), deps)}
    assert offered["classify"].variant == "xrv"
    [need] = offered["classify"].needs(CONFIG)
    assert need.name == f"xrv-{NAME}" and need.memory_mb == WEIGHTS[NAME].memory_mb
    assert not TOOLS[0].enabled(ToolDeps(store, VisionConfig()))
    with pytest.raises(ValueError, match="'xrv:' and one of densenet121-res224-all"):
        VisionConfig(classifier="xrv:densenet-nope")
    with pytest.raises(ValueError, match="classifier must be"):
        VisionConfig(classifier=NAME)  # the prefix says which kind of model it is


def test_the_evidence_carries_every_finding_as_an_assertion(store, tool):
    image_id = store.put(load_image(get_testdata_file("RG1_UNCI.dcm"))).id
    ev = tool.invoke({"image_id": image_id})
    assert ev.tool == "classify" and ev.status == "ok" and ev.image_id == image_id
    d = ev.data
    assert d["model"] == f"xrv:{NAME}" and len(d["labels"]) == 18 and d["not_judged"] == []
    assert d["input"].startswith("the DICOM's stored values")
    assert [a.finding for a in ev.assertions] == [lab.replace("_", " ").lower()
                                                  for lab in d["labels"]]
    for a, s, sig, t in zip(ev.assertions, d["scores"], d["sigmoids"], d["thresholds"],
                            strict=True):
        assert a.probability == pytest.approx(s, abs=1e-4)
        assert a.present == (s >= 0.5) == (sig >= t - 1e-4)
    assert d["scores"] == sorted(d["scores"], reverse=True) and ev.score == d["scores"][0]
    present = [a.finding for a in ev.assertions if a.present]
    assert "operating-point-normalised sigmoids" in ev.summary
    assert "not calibrated probabilities" in ev.summary
    if present:
        assert f"above the operating point: {present[0]}" in ev.summary
    assert d["heatmap_image_id"] is None and ev.new_image_ids == []


def test_the_heat_map_is_stored_as_a_new_image(store, tool):
    img = load_image(get_testdata_file("RG1_UNCI.dcm"))
    image_id = store.put(img).id
    ev = tool.invoke({"image_id": image_id, "heatmap": True})
    heat_id = ev.data["heatmap_image_id"]
    assert ev.new_image_ids == [heat_id] and heat_id in store and heat_id != image_id
    shown = store.get(heat_id)
    assert shown.display.shape == (*img.display.shape, 3)
    assert shown.meta["derived_from"] == image_id and "modality" not in shown.meta
    heat = store.get_array(ev.data["heatmap_key"]).astype(np.float32)
    assert heat.shape == img.display.shape and heat.max() == pytest.approx(1.0, abs=1e-3)
    # Where the map is 0 the film shows through unchanged (grey, R = G = B = display).
    cold = heat == 0
    assert cold.any()
    assert np.array_equal(shown.display[cold][:, 0], img.display[cold])
    assert f"heat map of {ev.assertions[0].finding}: image {heat_id}" in ev.summary


def test_non_chest_and_lateral_images_are_refused_with_the_reason(store, tool):
    ct = store.put(load_image(get_testdata_file("CT_small.dcm"))).id
    with pytest.raises(ToolInputError, match=r"validated on frontal \(PA/AP\) chest radiographs "
                                             r".*modality is CT, not"):
        tool.invoke({"image_id": ct})
    mr = store.put(load_image(get_testdata_file("MR_small.dcm"))).id
    with pytest.raises(ToolInputError, match="modality is MR"):
        tool.invoke({"image_id": mr})
    film = load_image(get_testdata_file("RG1_UNCI.dcm"))
    pixels = film.pixels.copy()
    pixels[0, 0] += 1  # its own id
    lateral = dataclasses.replace(film, pixels=pixels,
                                  meta={**film.meta, "view_position": "LL"})
    with pytest.raises(ToolInputError, match="view is LL, not AP/PA"):
        tool.invoke({"image_id": store.put(lateral).id})


def test_a_picture_without_tags_runs_flagged(store, tool, tmp_path):
    from PIL import Image

    yy, xx = np.mgrid[:200, :240]
    Image.fromarray(((np.sin(xx / 9) + np.cos(yy / 13)) * 60 + 128).astype(np.uint8)).save(
        tmp_path / "x.png")
    image_id = store.put(load_image(tmp_path / "x.png")).id
    ev = tool.invoke({"image_id": image_id})
    assert ev.data["out_of_domain"] is True and ev.summary.startswith("Outside what this tool")
    assert ev.data["input"] == "the 8-bit display over 255"
