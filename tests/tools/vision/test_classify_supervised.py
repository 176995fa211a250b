"""Supervised classification through transformers, on tiny random ViTs saved to temp folders.

The folders are what ``save_pretrained`` writes for a fine-tuned classifier (config with
``id2label`` + weights + image processor), so loading by path, the checkpoint's own
preprocessing and the softmax / sigmoid post-processing run for real; the probabilities are
checked against the same model run by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from tools.errors import ToolFailure
from tools.image import LoadedImage
from tools.models.classifiers import SupervisedClassifier
from tools.models.registry import VisionConfig, models
from tools.torch_compat import ensure_torchvision
from tools.vision.classify import supervised_classify_tools
from tools.vision.segment import vision_tools

pytestmark = pytest.mark.slow

LABELS = {0: "normal", 1: "effusion", 2: "cardiomegaly"}


def _save_vit(folder, problem_type: str | None):
    ensure_torchvision()
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=16, num_channels=3, hidden_size=32,
                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                    problem_type=problem_type)
    model = ViTForImageClassification(cfg)
    with torch.no_grad():  # a random head gives near-equal logits; spread them a little
        model.classifier.weight.mul_(20)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory):
    return {"single": _save_vit(tmp_path_factory.mktemp("vit-single"), None),
            "multi": _save_vit(tmp_path_factory.mktemp("vit-multi"),
                               "multi_label_classification")}


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:48, :64]
    return ((np.sin(xx / 5) + np.cos(yy / 7)) * 60 + 128).astype(np.uint8)


def _by_hand(folder, image):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder)
    rgb = np.repeat(image[..., None], 3, axis=2)
    with torch.no_grad():
        return model(**proc(images=rgb, return_tensors="pt")).logits[0]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_probabilities_match_the_model_run_by_hand(vit_dirs, kind):
    folder = vit_dirs[kind]
    clf = SupervisedClassifier(f"hf:{folder}", device="cpu")
    scores = clf.classify(_image())
    logits = _by_hand(folder, _image())
    expected = logits.sigmoid() if kind == "multi" else logits.softmax(-1)
    got = {s.label: s.probability for s in scores}
    assert set(got) == set(LABELS.values())
    for i, label in LABELS.items():
        assert got[label] == pytest.approx(float(expected[i]), abs=1e-5)
    assert [s.probability for s in scores] == sorted(got.values(), reverse=True)
    assert clf.multi_label() is (kind == "multi")
    if kind == "single":
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)


def test_tool_is_offered_when_configured_and_says_how_to_read_it(store, vit_dirs):
    img = LoadedImage(pixels=_image().astype(np.float32), display=_image(),
                      meta={"modality": "CR"}, source_format="synthetic")
    ref = store.put(img)
    cfg = VisionConfig(classifier=f"hf:{vit_dirs['multi']}", device="cpu")
    tool = {t.name: t for t in vision_tools(store, config=cfg)}["classify"]
    assert set(tool.args_schema.model_json_schema()["properties"]) == {"image_id"}
    ev = tool.invoke({"image_id": ref.id})
    assert ev.status == "ok" and ev.data["multi_label"] is True
    assert {a.finding for a in ev.assertions} == set(LABELS.values())
    assert ev.score == pytest.approx(max(a.probability or 0 for a in ev.assertions))
    assert "multi-label" in ev.summary
    row = next(r for r in models(cfg) if r.name == "hf-classifier")
    assert row.offline and row.loaded and row.task == "classify (supervised)"
    [direct] = supervised_classify_tools(store, SupervisedClassifier(f"hf:{vit_dirs['single']}",
                                                                     device="cpu"))
    assert "sum to 1" in direct.invoke({"image_id": ref.id}).summary


def test_bad_settings_and_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(ValueError, match="hf:ID_OR_PATH"):
        VisionConfig(classifier="densenet")
    clf = SupervisedClassifier(f"hf:{tmp_path / 'none'}", device="cpu")
    with pytest.raises(ToolFailure, match="could not be loaded"):
        clf.classify(_image())
