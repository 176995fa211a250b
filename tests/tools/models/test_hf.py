"""The GPU-path loaders run for real on tiny, randomly initialised transformers models.

Each test module builds a SAM, an OWLv2 and a Grounding DINO model with hidden sizes of 16-32,
and their processors and tokenizers (a letter-level vocabulary written here), saves them to a
temp folder, and loads them through ``tools.models.hf`` exactly as a user's checkpoint would be
loaded: config type check, ``from_pretrained``, pre-processing, the forward pass and
post-processing. Random weights say nothing about quality, so the checks are about the plumbing:
shapes, coordinate frames (the OWLv2 square padding), caching, and error messages.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from tools.errors import ToolFailure, ToolInputError
from tools.models.hf import HfDetector, HfSamSegmenter, _suppress
from tools.models.registry import VisionConfig, is_loaded
from tools.torch_compat import ensure_torchvision
from tools.vision.segment import segment, vision_tools

pytestmark = pytest.mark.slow

H, W = 50, 80  # a non-square image, so wrong aspect handling shows


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (H, W), dtype=np.uint8)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    ensure_torchvision()
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    cfg = SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           mlp_dim=64, output_channels=32, image_size=64, patch_size=8,
                           global_attn_indexes=[1], window_size=4, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 mlp_dim=64, iou_head_hidden_dim=32),
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-sam")
    SamModel(cfg).eval().save_pretrained(d)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(d)
    return str(d)


def _clip_vocab() -> dict[str, int]:
    chars = list(string.ascii_lowercase) + list(".,'-")
    vocab = {"!": 0}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    ensure_torchvision()
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    vocab = _clip_vocab()
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-owlv2")
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(d)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    ensure_torchvision()
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "lungs", "heart", "nodule",
             *string.ascii_lowercase]
    vocab = {w: i for i, w in enumerate(words)}
    cfg = GroundingDinoConfig(
        backbone_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=16,
                             depths=[1, 1], num_heads=[1, 1], window_size=4,
                             out_features=["stage1", "stage2"]),
        text_config=dict(model_type="bert", vocab_size=len(vocab), hidden_size=32,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
        num_feature_levels=2, encoder_n_points=2, decoder_n_points=2, max_text_len=32,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-grounding-dino")
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(d)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64,
                                                          "longest_edge": 96}),
        tokenizer=BertTokenizer(vocab=vocab)).save_pretrained(d)
    return str(d)


# ---- SAM ------------------------------------------------------------------------------------
def test_sam_box_and_point_prompts_share_one_embedding(sam_dir):
    seg = HfSamSegmenter(sam_dir, device="cpu")
    assert not is_loaded(seg.key)
    img = _image()
    mask, iou = seg.predict("img-a", img, (10, 5, 60, 40))
    assert is_loaded(seg.key)
    assert mask.shape == (H, W) and mask.dtype == bool  # back in the display's grid
    assert 0.0 <= iou <= 1.0
    mask2, iou2 = seg.predict_points("img-a", img, [(30, 20), (5, 5)], [1, 0])
    assert mask2.shape == (H, W) and 0.0 <= iou2 <= 1.0
    assert seg.encoder_calls == 1  # the second prompt reused the cached embedding
    again, _ = seg.predict("img-a", img, (10, 5, 60, 40))
    np.testing.assert_array_equal(again, mask)  # deterministic
    seg.predict("img-b", _image(1), (10, 5, 60, 40))
    assert seg.encoder_calls == 2


@contextmanager
def forward_kwargs(model) -> Iterator[dict]:
    """The keyword arguments of ``model``'s forward calls inside the block (the prompts)."""
    seen: dict = {}
    orig = model.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return orig(*args, **kwargs)

    model.forward = spy
    try:
        yield seen
    finally:
        del model.forward


def test_sam_prompt_coordinates_follow_the_longest_side_resize(sam_dir):
    """The box given to the model is the display box scaled by 64 / 80 on both axes."""
    import torch

    seg = HfSamSegmenter(sam_dir, device="cpu")
    model, _processor, kind = seg._model()
    assert kind == "sam"
    with forward_kwargs(model) as seen:
        seg.predict("img-c", _image(2), (10, 5, 60, 40))
    torch.testing.assert_close(seen["input_boxes"],
                               torch.tensor([[[8.0, 4.0, 48.0, 32.0]]]))


def test_segment_with_points_on_a_point_capable_model(sam_dir):
    seg = HfSamSegmenter(sam_dir, device="cpu")
    out = segment(_image(), None, seg, "img-d", spacing_mm=(0.5, 0.5), points=[[30, 20]])
    assert out.mask.shape == (H, W)
    assert out.area.unit == "mm2"
    with pytest.raises(ToolInputError, match="outside the image"):
        segment(_image(), None, seg, "img-d", points=[[300, 20]])


def test_sam_loader_refuses_missing_and_wrong_checkpoints(owl_dir, tmp_path):
    with pytest.raises(ToolFailure, match="could not be loaded"):
        HfSamSegmenter(str(tmp_path / "nowhere"), device="cpu").predict(
            None, _image(), (0, 0, 10, 10))
    with pytest.raises(ToolFailure, match="'owlv2' model"):
        HfSamSegmenter(owl_dir, device="cpu").predict(None, _image(), (0, 0, 10, 10))


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    ensure_torchvision()
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    hiera = dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1,
                 image_size=[64, 64], patch_kernel_size=[7, 7], patch_stride=[4, 4],
                 patch_padding=[3, 3], blocks_per_stage=[1, 1, 2, 1],
                 embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 1, 1],
                 window_size_per_stage=[2, 2, 2, 2], global_attention_blocks=[3],
                 window_positional_embedding_background_size=[2, 2])
    cfg = Sam2Config(
        vision_config=dict(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2,
                                 num_attention_heads=2, iou_head_hidden_dim=32),
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-sam2")
    Sam2Model(cfg).eval().save_pretrained(d)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 64, "width": 64})
                  ).save_pretrained(d)
    return str(d)


def test_sam2_box_and_point_prompts(sam2_dir):
    """SAM 2 stretches to its square input: its processor maps prompts by x * 64/80, y * 64/50."""
    import torch

    seg = HfSamSegmenter(sam2_dir, device="cpu")
    img = _image()
    mask, iou = seg.predict("img-s2", img, (10, 5, 60, 40))
    assert mask.shape == (H, W) and mask.dtype == bool and 0.0 <= iou <= 1.0
    model, _processor, kind = seg._model()
    assert kind == "sam2"
    with forward_kwargs(model) as seen:
        mask2, _ = seg.predict_points("img-s2", img, [(30, 20)], [1])
    assert mask2.shape == (H, W) and seg.encoder_calls == 1
    torch.testing.assert_close(seen["input_points"], torch.tensor([[[[24.0, 25.6]]]]))


# ---- detectors ------------------------------------------------------------------------------
def test_owlv2_boxes_are_mapped_through_the_padded_square(owl_dir):
    import torch
    from transformers.image_transforms import center_to_corners_format

    det = HfDetector(owl_dir, device="cpu")
    img = _image()
    found = det.detect(img, ["lungs", "heart"], threshold=0.0)
    assert found and len(found) <= 10
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert d.label in ("lungs", "heart") and 0.0 <= d.score <= 1.0
    # The best box, recomputed by hand: OWLv2 predicts boxes relative to the image padded to
    # a max(H, W) square, so both coordinates scale by 80 here (not by 80 and 50).
    model, processor, kind = det._model()
    assert kind == "owlv2"
    enc = processor(text=[["lungs", "heart"]], images=np.repeat(img[..., None], 3, 2),
                    return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc)
    scores, labels = out.logits[0].sigmoid().max(dim=-1)
    boxes = center_to_corners_format(out.pred_boxes[0]) * max(H, W)
    by_hand = []
    for b, sc, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        x0, y0, x1, y1 = (min(max(v, 0.0), lim) for v, lim in zip(b, (W, H, W, H), strict=True))
        by_hand.append(((x0, y0, x1, y1), sc, ("lungs", "heart")[lab]))
    for d in found:
        assert any(d.label == lab and abs(d.score - sc) < 1e-5
                   and d.box == pytest.approx(box, abs=0.06) for box, sc, lab in by_hand), d
    # Boxes reaching into the padding below the image were clipped to its bottom edge.
    assert any(d.box[3] == H for d in found)


def test_grounding_dino_labels_each_box_with_its_phrase(dino_dir):
    det = HfDetector(dino_dir, device="cpu")
    found = det.detect(_image(), ["nodule", "Heart."], threshold=0.0, max_boxes=6)
    assert 1 <= len(found) <= 6
    assert {d.label for d in found} <= {"nodule", "heart"}
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_suppress_clips_dedups_and_drops_empty_boxes():
    raw = [([-5.0, -5.0, 20.0, 20.0], "a", 0.9), ([0.0, 0.0, 19.0, 19.0], "a", 0.8),
           ([0.0, 0.0, 19.0, 19.0], "b", 0.7), ([90.0, 10.0, 120.0, 20.0], "a", 0.6)]
    out = _suppress(raw, W, H, 10)
    assert [(d.label, d.box) for d in out] == [("a", (0.0, 0.0, 20.0, 20.0)),
                                              ("b", (0.0, 0.0, 19.0, 19.0))]


def test_find_and_segment_tools_use_the_configured_models(store, sam_dir, dino_dir):
    from tools.image import LoadedImage

    img = LoadedImage(pixels=_image().astype(np.float32), display=_image(),
                      spacing_mm=(0.7, 0.7), spacing_source="PixelSpacing",
                      meta={"modality": "CT"}, source_format="synthetic")
    ref = store.put(img)
    cfg = VisionConfig(segmenter=f"hf:{sam_dir}", detector=f"hf:{dino_dir}", device="cpu")
    tools = {t.name: t for t in vision_tools(store, config=cfg)}
    ev = tools["find"].invoke({"image_id": ref.id, "target": "nodule"})
    assert ev.status == "ok" and ev.tool == "find"
    assert "hf:" in ev.summary and len(ev.boxes) == len(ev.mask_keys) >= 1
    assert ev.data["detector"] == f"hf:{dino_dir}"
    for key in ev.mask_keys:
        assert store.get_array(key).shape == (H, W)
    seg = tools["segment"].invoke({"image_id": ref.id, "points": [[30, 20]], "label": "x"})
    assert seg.data["model"] == f"hf:{sam_dir}" and seg.mask_keys[0] in seg.summary


def test_an_empty_detection_is_a_negative_observation_not_an_error(store):
    from tools.vision.find import phrase_evidence

    ev = phrase_evidence([], "nodule", store, "img-000000000000", "hf:tiny")
    assert ev.status == "ok" and not ev.boxes and ev.score is None
    assert "not located" in ev.summary and "does not prove it absent" in ev.summary
