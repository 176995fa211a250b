"""Zero-shot classification through open_clip, on a tiny random CLIP saved to a temp folder.

The folder has the layout a downloaded open_clip checkpoint has (``open_clip_config.json`` +
``open_clip_pytorch_model.bin``), so ``local-dir:`` loading, the model's own preprocessing, the
bundled BPE tokenizer and the softmax over label prompts all run for real. The probabilities
are checked against the same computation done by hand with the saved weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.errors import ToolFailure, ToolInputError
from tools.image import LoadedImage
from tools.models.classifiers import TEMPLATE, ZeroShotClassifier, clean_labels
from tools.models.registry import VisionConfig, models
from tools.torch_compat import ensure_torchvision
from tools.vision.classify import classify_tools
from tools.vision.segment import vision_tools

pytestmark = pytest.mark.slow

MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                   "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    ensure_torchvision()
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("tiny-clip")
    (d / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }))
    (d / "README.md").write_text("---\nlicense: mit\n---\n# tiny test CLIP\n")
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**MODEL_CFG).state_dict(), d / "open_clip_pytorch_model.bin")
    return d


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (40, 60), dtype=np.uint8)


def test_probabilities_match_a_hand_computation(clip_dir):
    import open_clip
    import torch
    from PIL import Image

    labels = ["pneumonia", "pleural effusion", "normal chest"]
    clf = ZeroShotClassifier(f"open_clip:{clip_dir}", device="cpu")
    assert clf.ref == f"local-dir:{clip_dir}"
    got = clf.classify(_image(), labels)
    assert sorted(c.label for c in got) == sorted(labels)
    assert sum(c.probability for c in got) == pytest.approx(1.0, abs=1e-5)
    assert [c.probability for c in got] == sorted((c.probability for c in got), reverse=True)

    model, _, pre = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    rgb = np.repeat(_image()[..., None], 3, axis=2)
    with torch.no_grad():
        im = model.encode_image(pre(Image.fromarray(rgb)).unsqueeze(0))
        tx = model.encode_text(tok([TEMPLATE.format(lab) for lab in labels]))
        im, tx = im / im.norm(dim=-1, keepdim=True), tx / tx.norm(dim=-1, keepdim=True)
        ref = (model.logit_scale.exp() * im @ tx.T).softmax(-1)[0].tolist()
    by = {c.label: c.probability for c in got}
    for lab, p in zip(labels, ref, strict=True):
        assert by[lab] == pytest.approx(p, abs=1e-5)


def test_labels_are_cleaned_and_one_label_refused():
    assert clean_labels([" Pneumonia ", "pneumonia", "normal  chest"]) == ["Pneumonia",
                                                                         "normal chest"]
    with pytest.raises(ToolInputError, match="2 to 12 distinct"):
        clean_labels(["pneumonia"])


def test_missing_checkpoint_is_a_tool_failure(tmp_path):
    clf = ZeroShotClassifier(f"open_clip:local-dir:{tmp_path / 'none'}", device="cpu")
    with pytest.raises(ToolFailure, match="could not be loaded"):
        clf.classify(_image(), ["a", "b"])


def test_classify_tool_is_offered_when_configured(store, clip_dir):
    img = LoadedImage(pixels=_image().astype(np.float32), display=_image(),
                      meta={"modality": "CR"}, source_format="synthetic")
    ref = store.put(img)
    cfg = VisionConfig(classifier=f"open_clip:{clip_dir}", device="cpu")
    assert "classify" not in {t.name for t in vision_tools(store, config=VisionConfig())}
    tool = {t.name: t for t in vision_tools(store, config=cfg)}["classify"]
    ev = tool.invoke({"image_id": ref.id, "labels": ["pneumonia", "normal"]})
    assert ev.status == "ok" and ev.tool == "classify"
    assert {a.finding for a in ev.assertions} == {"pneumonia", "normal"}
    assert ev.score == pytest.approx(max(a.probability or 0 for a in ev.assertions))
    assert "relative" in ev.summary
    [direct] = classify_tools(store, ZeroShotClassifier(f"open_clip:{clip_dir}", device="cpu"))
    assert direct.name == "classify"
    row = next(r for r in models(cfg) if r.name == "open-clip-classifier")
    assert row.offline and row.licence == "mit" and row.loaded and row.size_mb is not None
