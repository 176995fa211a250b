"""TorchXRayVision experts: loading by name, preprocessing, outputs, heat maps, failures.

Weights are architecture-exact random ones written where torchxrayvision looks for the named
file (``$HOME/.torchxrayvision/models_data/``, HOME pointed at a temp folder), in the format of
the published file; the classifier is then loaded BY NAME through medloop's code, so the user's
path runs, not a shortcut. Preprocessing is pinned against torchxrayvision's own reading of
pydicom-data's chest radiograph (RG1_UNCI, a MONOCHROME1 CR) and of a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tools.errors import ToolFailure, ToolInputError
from tools.image import LoadedImage
from tools.ingest.loader import load_image
from tools.models.registry import describe_models, is_loaded, loaded_models, unload
from tools.models.xrv import (
    ANATOMY_STRUCTURES,
    AnatomySegmenter,
    XrvClassifier,
    XrvInput,
    anatomy_input,
    build_random,
    classifier_input,
    fetch_weights,
    op_inverse,
    write_random_weights,
    xrv_pixels,
)
from tools.models.xrv_catalog import PSPNET, WEIGHTS, anatomy_need, classifier_need
from tools.spec import XRV_CLASSIFIERS, VisionConfig

pytestmark = pytest.mark.slow

DENSENET = "densenet121-res224-all"
RESNET = "resnet50-res512-all"


def _xrv():
    from tools.models.xrv import _xrv

    return _xrv()


@pytest.fixture(scope="module")
def xrv_home(tmp_path_factory) -> Path:
    """A HOME whose torchxrayvision cache holds random DenseNet-all and ResNet50-512 weights."""
    home = tmp_path_factory.mktemp("xrv-home")
    folder = home / ".torchxrayvision" / "models_data"
    for name in (DENSENET, RESNET):
        write_random_weights(name, folder)
    return home


@pytest.fixture(autouse=True)
def _home(xrv_home, monkeypatch):
    monkeypatch.setenv("HOME", str(xrv_home))
    for name in (DENSENET, RESNET):  # every test loads by name itself
        unload(f"xrv:{name}:cpu")
    yield
    for name in (DENSENET, RESNET):
        unload(f"xrv:{name}:cpu")


@pytest.fixture(scope="module")
def rg1() -> LoadedImage:
    return load_image(get_testdata_file("RG1_UNCI.dcm"))


def test_the_catalog_matches_the_installed_torchxrayvision(xrv_home):
    xrv = _xrv()
    published = {k for k in xrv.models.model_urls if k.startswith(("densenet", "resnet"))}
    assert set(XRV_CLASSIFIERS) == published
    assert set(WEIGHTS) == {*XRV_CLASSIFIERS, PSPNET}
    for name in XRV_CLASSIFIERS:
        url = xrv.models.model_urls[name]
        w = WEIGHTS[name]
        assert w.url == url["weights_url"] and w.resolution == url["input_resolution"]
        assert w.path() == Path(xrv.utils.get_cache_dir(), w.filename)
    assert str(WEIGHTS[RESNET].path()).startswith(str(xrv_home))  # $HOME decides, as in xrv
    assert list(ANATOMY_STRUCTURES) == list(xrv.baseline_models.chestx_det.PSPNet.targets)


def test_a_classifier_loads_by_name_from_torchxrayvisions_cache(xrv_home, rg1):
    clf = XrvClassifier(DENSENET, "cpu")
    assert not clf.loaded
    model = clf.model()
    assert clf.loaded and is_loaded(f"xrv:{DENSENET}:cpu")
    # torchxrayvision itself resolved the file: the one under our temp HOME, by its name.
    assert Path(model.weights_filename_local) == WEIGHTS[DENSENET].path()
    assert Path(model.weights_filename_local).is_relative_to(xrv_home)
    assert type(model).__name__ == "DenseNet" and not model.training
    assert list(model.pathologies) == _xrv().models.model_urls[DENSENET]["labels"]
    # What `medloop models --json` reports as loaded, and where: this one, on the CPU, with
    # the size the budget would count on a GPU.
    row = {r["key"]: r for r in loaded_models()}[f"xrv:{DENSENET}:cpu"]
    assert (row["device"], row["declared_mb"], row["counted"], row["loading"]) == (
        "cpu", WEIGHTS[DENSENET].memory_mb, False, False)


def test_build_random_loads_random_weights_by_name_for_the_gpu_check(tmp_path):
    model = build_random(DENSENET, "cpu", tmp_path)
    assert Path(model.weights_filename_local) == WEIGHTS[DENSENET].path(tmp_path)
    assert not is_loaded(f"xrv:{DENSENET}:cpu")  # a bare module: the cache is the user's


def test_preprocessing_matches_torchxrayvisions_own_reading_of_the_dicom(rg1):
    xrv = _xrv()
    path = get_testdata_file("RG1_UNCI.dcm")
    with pytest.warns(UserWarning, match="MONOCHROME1"):
        theirs = xrv.utils.read_xray_dcm(path)[None]
    for size in (224, 512):
        expected = xrv.datasets.XRayResizer(size)(xrv.datasets.XRayCenterCrop()(theirs))
        ours = classifier_input(rg1, size)
        assert ours.array.shape == expected.shape == (1, size, size)
        assert ours.array.dtype == np.float32
        np.testing.assert_allclose(ours.array, expected, atol=1e-2)
        assert "stored values over 2^15-1" in ours.source
    assert ours.array.min() >= -1024 and ours.array.max() <= 1024


def test_preprocessing_of_a_png_matches_torchxrayvisions_load_image(tmp_path):
    from PIL import Image

    xrv = _xrv()
    yy, xx = np.mgrid[:180, :260]
    grey = ((np.sin(xx / 9) + np.cos(yy / 13)) * 60 + 128).astype(np.uint8)
    png = tmp_path / "film.png"
    Image.fromarray(grey).save(png)
    theirs = xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(
        xrv.utils.load_image(str(png))))
    ours = classifier_input(load_image(png), 224)
    np.testing.assert_allclose(ours.array, theirs, atol=1e-2)
    assert ours.source == "the 8-bit display over 255"
    assert (ours.x0, ours.y0, ours.side) == (40, 0, 180)  # the centre 180 x 180 square


def test_scores_are_torchxrayvisions_outputs_in_its_label_order(rg1):
    import torch

    clf = XrvClassifier(DENSENET, "cpu")
    res = clf.classify(rg1)
    model = clf.model()
    x = torch.from_numpy(classifier_input(rg1, 224).array[None])
    with torch.inference_mode():
        theirs = model(x)[0].tolist()  # xrv's forward: op-normalised sigmoids
        raw = torch.sigmoid(model.classifier(model.features2(x)))[0].tolist()
    assert len(res.findings) == 18 and res.not_judged == []
    labels = list(model.pathologies)
    for f in res.findings:
        i = labels.index(f.label)
        assert f.score == pytest.approx(theirs[i], abs=1e-5)
        assert f.sigmoid == pytest.approx(raw[i], abs=1e-4)
        assert f.threshold == pytest.approx(float(model.op_threshs[i]), rel=1e-6)
        assert f.present == (f.sigmoid >= f.threshold)
    assert [f.score for f in res.findings] == sorted((f.score for f in res.findings),
                                                     reverse=True)
    assert len({round(f.score, 3) for f in res.findings}) > 5  # spread, not saturated
    ppv = _xrv().models.model_urls[DENSENET]["ppv80_thres"]
    assert all(f.ppv80 == (f.sigmoid >= ppv[labels.index(f.label)]) for f in res.findings)


def test_op_inverse_undoes_op_norm():
    import torch

    xrv = _xrv()
    sig = torch.tensor([[0.01, 0.2, 0.5, 0.93, 0.07]])
    thr = torch.tensor([0.05, 0.3, 0.5, 0.6, 0.07])
    normed = xrv.models.op_norm(sig, thr)[0].tolist()
    back = [op_inverse(s, t) for s, t in zip(normed, thr.tolist(), strict=True)]
    np.testing.assert_allclose(back, sig[0].tolist(), atol=1e-6)


def test_the_resnet_at_512_leaves_out_the_labels_it_has_no_threshold_for(rg1):
    import torch

    clf = XrvClassifier(RESNET, "cpu")
    res = clf.classify(rg1)
    model = clf.model()
    assert type(model).__name__ == "ResNet"
    assert Path(model.weights_filename_local) == WEIGHTS[RESNET].path()
    threshs = model.op_threshs.tolist()
    no_threshold = {lab for lab, t in zip(model.pathologies, threshs, strict=True)
                    if math.isnan(t)}
    assert no_threshold == {"Lung Lesion", "Enlarged Cardiomediastinum"}
    assert set(res.not_judged) == no_threshold and len(res.findings) == 16
    with torch.inference_mode():
        theirs = model(torch.from_numpy(classifier_input(rg1, 512).array[None]))[0].tolist()
    for f in res.findings:
        assert f.score == pytest.approx(theirs[list(model.pathologies).index(f.label)], abs=1e-5)


def test_the_heat_map_covers_the_crop_the_model_saw(rg1):
    res = XrvClassifier(DENSENET, "cpu").classify(rg1, heatmap=True)
    heat = res.heatmap
    assert heat is not None and heat.shape == rg1.display.shape
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0, abs=1e-3)
    # RG1 is 1955 x 1841: the centre square starts 57 rows down; nothing above or below it.
    assert not heat[:57].any() and not heat[57 + 1841:].any()
    assert heat[57:57 + 1841].any()


def test_missing_and_broken_weights_are_clear_failures(xrv_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ToolFailure, match=r"not downloaded: .*nih-pc-chex.*\.pt is missing.*"
                                          r"medloop models pull.*github.com/mlmed"):
        XrvClassifier(DENSENET, "cpu").model()
    assert not is_loaded(f"xrv:{DENSENET}:cpu")
    broken = WEIGHTS[DENSENET].path()
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ToolFailure, match=r"could not be loaded from .*delete it"):
        XrvClassifier(DENSENET, "cpu").model()
    with pytest.raises(ToolInputError, match="unknown TorchXRayVision weights 'densenet-9'"):
        XrvClassifier("densenet-9", "cpu")


def test_fetch_weights_uses_torchxrayvisions_downloader_and_reports_failures(
        monkeypatch, tmp_path):
    xrv = _xrv()
    calls = []

    def offline(url, filename):
        calls.append((url, filename))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(xrv.utils, "download", offline)
    with pytest.raises(ToolFailure, match=r"could not download https://github.com/mlmed/.*"
                                          r"Name or service not known"):
        fetch_weights(DENSENET, tmp_path)
    assert calls == [(WEIGHTS[DENSENET].url, str(WEIGHTS[DENSENET].path(tmp_path)))]
    # Present already: returned without a download.
    assert fetch_weights(RESNET) == WEIGHTS[RESNET].path() and len(calls) == 1


def test_models_are_described_without_loading(xrv_home, tmp_path, monkeypatch):
    rows = {r.name: r for r in describe_models(
        [classifier_need(DENSENET), anatomy_need()], VisionConfig(device="cpu"))}
    here = rows[f"xrv-{DENSENET}"]
    assert here.offline and here.size_mb and here.size_mb > 20 and not here.loaded
    assert here.memory_mb == WEIGHTS[DENSENET].memory_mb and here.device == "cpu"
    missing = rows[PSPNET]
    assert not missing.offline and missing.size_mb is None
    assert missing.note.endswith("not downloaded yet")


def test_pspnet_loads_by_name_and_maps_masks_back_to_the_image(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_random_weights(PSPNET, WEIGHTS[PSPNET].path().parent)
    seg = AnatomySegmenter("cpu")
    unload(seg.key)
    try:
        model = seg.model()
        assert Path(model.weights_filename_local) == WEIGHTS[PSPNET].path()
        assert list(model.targets) == list(ANATOMY_STRUCTURES)
    finally:
        unload(seg.key)


def test_the_anatomy_input_pads_the_whole_film_and_maps_back_exactly():
    img = LoadedImage(pixels=np.zeros((100, 200), np.uint8),
                      display=np.full((100, 200), 255, np.uint8), source_format="png")
    inp = anatomy_input(img)
    assert (inp.x0, inp.y0, inp.side) == (0, -50, 200)
    a = inp.array[0]
    # The film (white, 1024) fills rows 128..384 of 512; the padding is black (-1024).
    # (torchxrayvision's resizer blends the outermost pixels with 0: its skimage mode.)
    assert a[1:120, 1:-1].max() == -1024 and a[392:-1, 1:-1].max() == -1024
    assert a[136:376, 1:-1].min() == pytest.approx(1024)
    on_film = np.zeros((512, 512), np.float32)
    on_film[128:384] = 1
    assert inp.to_image(on_film, (100, 200)).min() == pytest.approx(1.0)
    padding_only = 1 - on_film
    assert inp.to_image(padding_only, (100, 200)).max() == pytest.approx(0.0, abs=1e-6)


def test_to_image_places_a_crop_inside_a_larger_image():
    inp = XrvInput(array=np.zeros((1, 4, 4), np.float32), source="", x0=10, y0=0, side=20)
    plane = np.ones((4, 4), np.float32)
    out = inp.to_image(plane, (20, 40))
    assert out[:, 10:30].min() == 1 and out[:, :10].max() == 0 and out[:, 30:].max() == 0


def test_images_a_model_cannot_read_are_refused():
    tiny = LoadedImage(pixels=np.zeros((4, 4), np.uint8), display=np.zeros((4, 4), np.uint8))
    with pytest.raises(ToolInputError, match="at least 8x8"):
        xrv_pixels(tiny)
    # A DICOM whose values do not fit its BitsStored falls back to the display.
    odd = LoadedImage(pixels=np.full((16, 16), 5000, np.uint16),
                      display=np.full((16, 16), 255, np.uint8), source_format="dicom",
                      meta={"bits_stored": 12, "photometric": "MONOCHROME2"})
    grey, how = xrv_pixels(odd)
    assert how == "the 8-bit display over 255" and grey.max() == pytest.approx(1024)
