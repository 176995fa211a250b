"""The image embedders measured for the case library: poolings, baselines, names, weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrievers.embedders import (
    POOLINGS,
    EfficientNetLiteEmbedder,
    HistogramEmbedder,
    MedSamImageEmbedder,
    MedSamPooledEmbedder,
    ThumbnailEmbedder,
    image_embedder_by_name,
    pool_feature_map,
)
from retrievers.library import CaseLibrary, EmbedderMismatch, NewCase
from tests.retrievers.helpers import PixelEmbedder
from tests.retrievers.helpers import _image as _noise_image


def _image(seed: int, shape: tuple[int, int] = (90, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((yy - shape[0] * rng.uniform(0.3, 0.7)) ** 2
            + (xx - shape[1] * rng.uniform(0.3, 0.7)) ** 2) < (shape[0] / 4) ** 2
    return np.clip(40 + 150 * disc + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("pooling", "dim"), [("mean", 4), ("max", 4), ("gem", 4),
                                              ("meanstd", 8), ("grid2", 16)])
def test_pooling_shapes(pooling: str, dim: int) -> None:
    fmap = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    assert pool_feature_map(fmap, pooling).shape == (dim,)


def test_pooling_values() -> None:
    fmap = np.zeros((1, 2, 2), np.float32)
    fmap[0, 0, 0] = 8.0  # one bright cell top-left
    assert pool_feature_map(fmap, "mean")[0] == pytest.approx(2.0)
    assert pool_feature_map(fmap, "max")[0] == pytest.approx(8.0)
    assert 2.0 < pool_feature_map(fmap, "gem")[0] < 8.0
    assert pool_feature_map(fmap, "grid2").tolist() == pytest.approx([8.0, 0.0, 0.0, 0.0])
    assert pool_feature_map(fmap, "meanstd").tolist() == pytest.approx([2.0, np.sqrt(12.0)])
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_feature_map(fmap, "median")


@pytest.mark.parametrize("embedder", [ThumbnailEmbedder(16), HistogramEmbedder(32)],
                         ids=["thumbnail", "histogram"])
def test_baselines_are_unit_and_deterministic(embedder) -> None:
    a, b = _image(0), _image(1) // 2  # another layout, darker
    x = embedder.embed_images([a, b, a, np.stack([a] * 3, axis=2)])
    assert x.shape == (4, embedder.dim)
    assert np.linalg.norm(x, axis=1) == pytest.approx(np.ones(4), abs=1e-5)
    assert x[0] == pytest.approx(x[2]) and x[0] == pytest.approx(x[3], abs=1e-5)
    assert float(x[0] @ x[1]) < 0.999


def test_names_round_trip() -> None:
    for e in [*(MedSamPooledEmbedder(p) for p in POOLINGS),
              *(EfficientNetLiteEmbedder(p) for p in POOLINGS),
              ThumbnailEmbedder(32), HistogramEmbedder(16), MedSamImageEmbedder()]:
        again = image_embedder_by_name(e.name)
        assert (again.name, again.dim) == (e.name, e.dim)
    with pytest.raises(ValueError, match="unknown image embedder"):
        image_embedder_by_name("litemedsam-median-v1")


@pytest.mark.slow
def test_efficientnet_uses_the_packaged_weights() -> None:
    e = EfficientNetLiteEmbedder("mean")
    a, b = _image(0), _image(1)
    x = e.embed_images([a, b, a])
    assert x.shape == (3, 1280)
    assert x[0] == pytest.approx(x[2], abs=1e-5)
    assert float(x[0] @ x[1]) < 0.999
    # random weights would not give a sparse, non-negative (post-swish, pooled) code
    assert (x > -0.05).all()


@pytest.mark.slow
def test_medsam_mean_pooling_is_the_existing_embedding() -> None:
    a = _image(2)
    pooled = MedSamPooledEmbedder("mean").embed_images([a])[0]
    assert float(pooled @ MedSamImageEmbedder().embed_images([a])[0]) == pytest.approx(1.0,
                                                                                      abs=1e-5)
    assert MedSamPooledEmbedder("grid2").embed_images([a]).shape == (1, 1024)


# ---------------------------------------------------------------------------------------------
# OpenClipEmbedder from a local folder: text-to-image search in one space
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch

    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                        "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    return folder


@pytest.mark.slow
def test_open_clip_from_a_local_folder_gives_text_to_image_search(tiny_clip, tmp_path):
    from retrievers.embedders import OpenClipEmbedder

    emb = OpenClipEmbedder(str(tiny_clip), device="cpu")
    assert emb.identity == {"name": f"open_clip:{tiny_clip}", "dim": 32}
    imgs = [np.stack([_noise_image(i, 64)] * 3, axis=2) for i in range(6)]
    vecs = emb.embed_images(imgs)
    assert vecs.shape == (6, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    lib = CaseLibrary.create(tmp_path / "clip", emb, emb)
    lib.add([NewCase(case_id=f"c{i}", display=im, report=f"case {i}")
             for i, im in enumerate(imgs)])
    assert lib.search_image(imgs[4], k=1)[0].case_id == "c4"
    # Text and images share the space: the text query searches the image vectors directly.
    query = emb.embed_texts(["case 2"])
    hits = lib.search_text("case 2", k=6)
    assert all(h.via == "text-image" for h in hits) and len(hits) == 6
    expected = np.argsort(-(vecs @ query[0]))
    assert [h.case_id for h in hits] == [f"c{i}" for i in expected]
    assert lib.search_text("case 2", k=1, target="reports")[0].via == "report"
    lib.close()
    with pytest.raises(EmbedderMismatch):
        CaseLibrary.open(tmp_path / "clip", PixelEmbedder(), emb)
