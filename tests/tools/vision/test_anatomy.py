"""Chest anatomy: the CTR from a heart mask, ``measure_lungs`` with an anatomy model, and
``segment_anatomy`` through TorchXRayVision's PSPNet loaded by name (random weights).

The CTR checks use drawn masks whose widths are known. The ``measure_lungs`` wiring runs the
real ``AnatomySegmenter`` with its per-image reading of a synthetic film set beforehand (the
cache the tool reads first), so the geometry is known; ``segment_anatomy`` runs the network.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from agent.planner.toolset import offered_specs, tool_specs
from tools.errors import ToolInputError
from tools.image import LoadedImage
from tools.ingest.loader import load_image
from tools.models.registry import unload
from tools.models.xrv import ANATOMY_STRUCTURES, Anatomy, AnatomySegmenter, write_random_weights
from tools.models.xrv_catalog import PSPNET, WEIGHTS
from tools.spec import ToolDeps, VisionConfig
from tools.vision import measure
from tools.vision.anatomy import TOOLS
from tools.vision.measure import (
    cardiothoracic_ratio,
    cardiothoracic_ratio_from_heart,
    lungs_from_anatomy,
    measure_tools,
)

CONFIG = VisionConfig(anatomy=PSPNET, device="cpu")
H, W = 400, 400


def _film_masks() -> dict[str, np.ndarray]:
    """Lungs at columns 60-180 and 220-340 (thorax 280 px), a heart at 150-270 (120 px)."""
    m = {n: np.zeros((H, W), bool) for n in ANATOMY_STRUCTURES}
    m["Right Lung"][80:320, 60:180] = True  # the patient's right: image-left on a PA film
    m["Left Lung"][80:320, 220:340] = True
    yy, xx = np.mgrid[:H, :W]
    m["Heart"] = ((xx - 210) / 60) ** 2 + ((yy - 260) / 50) ** 2 <= 1  # 150..270 wide
    return m


def _film() -> LoadedImage:
    display = np.full((H, W), 40, np.uint8)
    display[80:320, 60:340] = 200
    return LoadedImage(pixels=display.copy(), display=display, spacing_mm=(0.5, 0.5),
                       spacing_source="PixelSpacing", source_format="dicom",
                       meta={"modality": "DX", "body_part": "CHEST", "view_position": "PA",
                             "patient_orientation": ["L", "F"]})


def test_ctr_from_a_heart_mask_is_its_width_over_the_thorax():
    m = _film_masks()
    ctr = cardiothoracic_ratio_from_heart(m["Heart"], m["Right Lung"], m["Left Lung"])
    assert (ctr.heart.value, ctr.thorax.value, ctr.heart.unit) == (121, 280, "px")
    assert ctr.ratio == pytest.approx(121 / 280) and ctr.method == "heart mask"
    x0, _, x1, _ = ctr.heart.line
    assert (x0, x1) == (150, 271)
    mm = cardiothoracic_ratio_from_heart(m["Heart"], m["Right Lung"], m["Left Lung"],
                                         (0.5, 0.7))
    # Widths run along x: the column spacing (0.7 mm) scales them.
    assert (mm.heart.value, mm.thorax.value) == pytest.approx((121 * 0.7, 280 * 0.7))
    assert mm.heart.unit == mm.thorax.unit == "mm"
    assert mm.ratio == pytest.approx(ctr.ratio)
    # A stray island of "heart" far out in a lung does not widen it.
    island = m["Heart"].copy()
    island[100:110, 70:80] = True
    assert cardiothoracic_ratio_from_heart(island, m["Right Lung"], m["Left Lung"]).heart.value \
        == 121
    # The lung-border estimate of the same film is the gap between the lungs, 40 px.
    assert cardiothoracic_ratio(m["Right Lung"], m["Left Lung"]).heart.value == 40
    with pytest.raises(ToolInputError, match="empty"):
        cardiothoracic_ratio_from_heart(np.zeros((H, W), bool), m["Right Lung"], m["Left Lung"])
    with pytest.raises(ToolInputError, match="side by side"):
        cardiothoracic_ratio_from_heart(m["Heart"], m["Left Lung"], m["Right Lung"])


def test_lungs_from_anatomy_take_their_sides_from_the_image_and_its_orientation():
    m = _film_masks()
    anat = Anatomy(masks=m, scores={n: 0.9 for n in m}, source="test")
    found = lungs_from_anatomy(anat, {"patient_orientation": ["L", "F"]})
    assert found is not None and [lung.side for lung in found.lungs] == ["right", "left"]
    assert found.side("right").box == (60.0, 80.0, 180.0, 320.0)
    mirrored = lungs_from_anatomy(anat, {"patient_orientation": ["R", "F"]})
    assert mirrored is not None and mirrored.side("right").box == (220.0, 80.0, 340.0, 320.0)
    one = Anatomy(masks={**m, "Left Lung": np.zeros((H, W), bool)}, scores=anat.scores,
                  source="test")
    assert lungs_from_anatomy(one, {}) is None


def _measure_lungs(store, seg):
    spec = next(s for s in measure.TOOLS if s.variant == "heart-mask")
    return spec.bind(measure._lung_measurer(store, None, seg), store)


def test_measure_lungs_takes_the_ctr_from_the_anatomy_models_heart(store):
    film = _film()
    image_id = store.put(film).id
    seg = AnatomySegmenter("cpu")
    m = _film_masks()
    seg.cache.get(image_id, film.display,
                  lambda: Anatomy(masks=m, scores={n: 0.8 for n in m}, source="test"))
    ev = _measure_lungs(store, seg).invoke({"image_id": image_id})
    by = {x.name: x for x in ev.measurements}
    assert ev.data["ctr_method"] == "heart mask" and ev.data["labels"][-1] == "heart"
    assert by["heart_width"].value == pytest.approx(121 * 0.5)
    assert by["thorax_width"].value == pytest.approx(280 * 0.5)
    assert by["cardiothoracic_ratio"].value == pytest.approx(round(121 / 280, 4))
    assert by["right_lung_area"].value == pytest.approx(240 * 120 * 0.25)
    assert "heart width from the heart mask" in ev.summary and "lungs from the anatomy model" \
        in ev.summary
    heart_key = ev.mask_keys[-1]
    assert f"{heart_key} (heart)" in ev.summary
    assert np.array_equal(store.get_array(heart_key).astype(bool), m["Heart"])
    assert seg.cache.computed == 1  # the network never ran: the reading was the film's


def test_without_a_heart_the_lung_border_estimate_stays_and_says_why(store):
    film = _film()
    image_id = store.put(film).id
    seg = AnatomySegmenter("cpu")
    m = {**_film_masks(), "Heart": np.zeros((H, W), bool)}
    seg.cache.get(image_id, film.display,
                  lambda: Anatomy(masks=m, scores={n: 0.8 for n in m}, source="test"))
    ev = _measure_lungs(store, seg).invoke({"image_id": image_id})
    by = {x.name: x for x in ev.measurements}
    assert ev.data["ctr_method"] == "lung borders"
    assert ev.data["ctr_note"] == "the anatomy model found no heart"
    assert by["heart_width"].value == pytest.approx(40 * 0.5)
    assert "approximated from the lung borders (the anatomy model found no heart)" in ev.summary
    assert len(ev.mask_keys) == 2


def test_configuring_the_anatomy_model_offers_its_tools(store):
    offered = {s.name: s for s in offered_specs(tool_specs(), ToolDeps(store, CONFIG))}
    assert offered["measure_lungs"].variant == "heart-mask"
    assert offered["segment_anatomy"].variant == PSPNET
    needs = [n.name for n in offered["measure_lungs"].needs(CONFIG)]
    assert needs[0] == PSPNET
    plain = {s.name: s for s in offered_specs(tool_specs(), ToolDeps(store, VisionConfig()))}
    assert "segment_anatomy" not in plain and plain["measure_lungs"].variant == ""
    with pytest.raises(ValueError, match="anatomy must be unset or 'xrv-pspnet'"):
        VisionConfig(anatomy="pspnet")


@pytest.fixture(scope="module")
def pspnet_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("xrv-home")
    write_random_weights(PSPNET, home / ".torchxrayvision" / "models_data")
    return home


@pytest.mark.slow
def test_segment_anatomy_runs_the_pspnet_by_name_and_stores_each_mask(
        store, pspnet_home, monkeypatch):
    monkeypatch.setenv("HOME", str(pspnet_home))
    unload(f"xrv:{PSPNET}:cpu")
    try:
        [spec] = TOOLS
        tool = spec.tool(ToolDeps(store, CONFIG))
        film = _film()
        image_id = store.put(film).id
        ev = tool.invoke({"image_id": image_id})
        assert ev.tool == "segment_anatomy" and ev.data["model"] == PSPNET
        found, missing = ev.data["structures"], ev.data["not_found"]
        assert sorted(found + missing) == sorted(n.lower() for n in ANATOMY_STRUCTURES)
        assert len(ev.mask_keys) == len(found) == len(ev.boxes)
        areas = {x.name: x for x in ev.measurements}
        [measure_tool, _] = measure_tools(store)
        for name, key in zip(found, ev.mask_keys, strict=True):
            mask = store.get_array(key).astype(bool)
            assert mask.shape == film.display.shape and mask.any()
            area = areas[f"{name.replace(' ', '_')}_area"]
            assert area.unit == "mm2" and area.value == pytest.approx(mask.sum() * 0.25)
            assert key in ev.summary
        if found:  # a mask is measurable by key, like segment's
            follow = measure_tool.invoke({"image_id": image_id, "mask_key": ev.mask_keys[0]})
            assert follow.measurements[0].value == pytest.approx(
                areas[f"{found[0].replace(' ', '_')}_area"].value)
        # Asking for some structures reads the cached result: the network ran once.
        some = tool.invoke({"image_id": image_id, "structures": ["heart", "left_lung"]})
        assert sorted(some.data["structures"] + some.data["not_found"]) == ["heart", "left lung"]
        with pytest.raises(ToolInputError, match="unknown structure 'liver'"):
            tool.invoke({"image_id": image_id, "structures": ["liver"]})
        ct = store.put(load_image(get_testdata_file("CT_small.dcm"))).id
        with pytest.raises(ToolInputError, match="modality is CT"):
            tool.invoke({"image_id": ct})
        assert WEIGHTS[PSPNET].path().is_relative_to(pspnet_home)
    finally:
        unload(f"xrv:{PSPNET}:cpu")


def test_the_settings_come_from_the_environment():
    from agent.context import AgentContext

    ctx = AgentContext.from_env({"MEDLOOP_ANATOMY": "xrv-pspnet",
                                 "MEDLOOP_CLASSIFIER": "xrv:resnet50-res512-all",
                                 "MEDLOOP_DEVICE": "cpu"})
    assert (ctx.vision.anatomy, ctx.vision.classifier) == (PSPNET, "xrv:resnet50-res512-all")
    with pytest.raises(ValueError, match="anatomy must be"):
        AgentContext.from_env({"MEDLOOP_ANATOMY": "totalsegmentator"})
