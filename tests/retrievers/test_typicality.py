"""retrievers.typicality: a library's experts flag an image unlike every image it holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrievers.typicality import MARGIN, MIN_IMAGES, floor_of, typicality

MINI = Path("tests/fixtures/vqa_rad_mini")


def _cluster(rng: np.random.Generator, n: int, centre: np.ndarray, spread: float) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, centre.size))


def test_the_floor_is_the_librarys_most_isolated_image_less_a_share_of_the_spread():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(32)
    library = _cluster(rng, 60, centre, 0.3)
    floor = floor_of(library)
    assert floor is not None and floor.images == 60
    assert floor.cosine == pytest.approx(floor.lowest - MARGIN * (floor.median - floor.lowest))
    unit = library / np.linalg.norm(library, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -1)
    assert floor.lowest == pytest.approx(sims.max(axis=1).min(), abs=1e-6)
    # new images drawn like the library's are inside; an unrelated direction is not
    assert all(typicality(floor, v).inside for v in _cluster(rng, 20, centre, 0.3))
    far = typicality(floor, rng.standard_normal(32))
    assert not far.inside and far.nearest < floor.cosine
    assert "unlike every image of the case library" in far.note()
    assert floor_of(library[: MIN_IMAGES - 1]) is None  # too few images to say


def test_similar_cases_flags_an_image_unlike_every_case_of_its_library(tmp_path, store):
    """Through the real tool and library, on pixel embeddings (fast)."""
    import cv2

    from retrievers.library import CaseLibrary, NewCase
    from retrievers.similar import retrieval_tools
    from tests.retrievers.helpers import PixelEmbedder, WordsEmbedder
    from tools.image import LoadedImage

    base = np.zeros((48, 48), np.uint8)
    cv2.circle(base, (24, 24), 14, 200, -1)  # every case: a bright disc, in its own noise
    def disc(seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).integers(0, 40, (48, 48))
        return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)

    lib = CaseLibrary.create(tmp_path / "discs", PixelEmbedder(), WordsEmbedder())
    lib.add([NewCase(case_id=f"d{i}", display=disc(i), image=f"d{i}.png", modality="CT")
             for i in range(30)])
    similar = next(t for t in retrieval_tools(store, lib) if t.name == "similar_cases")

    def ask(display: np.ndarray):
        ref = store.put(LoadedImage(pixels=display, display=display, source_format="png"))
        return similar.invoke({"image_id": ref.id, "k": 3})

    like = ask(disc(99))
    assert like.data["typicality"]["inside"] and not like.data.get("out_of_domain")
    stripes = np.tile((np.arange(48) % 8 < 4).astype(np.uint8) * 255, (48, 1))
    unlike = ask(stripes)
    assert unlike.data["out_of_domain"] and not unlike.data["typicality"]["inside"]
    assert unlike.data["cases"] and unlike.score <= 0.25  # listed, but flagged
    assert "unlike every image of the case library" in unlike.summary
    lib.close()


@pytest.mark.slow
def test_the_shipped_librarys_experts_keep_off_pictures_unlike_its_images(medloop_home):
    """The real code path: LiteMedSAM over the installed shipped library, through the tools."""
    import imageio.v3 as iio
    import skimage.data

    from agent.context import AgentContext
    from agent.planner.toolset import default_tools
    from retrievers.shipped_library import SOURCE
    from retrievers.vqa_library import library_image_vectors, open_case_library
    from tools.errors import OutsideDomain
    from tools.image import LoadedImage
    from tools.ingest.loader import load_image
    from tools.store import ImageStore

    store = ImageStore(medloop_home / "store")
    tools = {t.name: t for t in default_tools(AgentContext(home=medloop_home, checkpoint=None,
                                                           device="cpu"), store)}
    page = medloop_home / "page.png"  # scikit-image's scanned page of text
    iio.imwrite(page, skimage.data.page())
    ev = tools["case_answer"].invoke({"image_id": store.put(load_image(page)).id,
                                      "question": "Is there a pneumothorax?"})
    assert ev.data["out_of_domain"] and ev.data["answer"] is None
    assert ev.data["withheld"] in ("yes", "no") and ev.score == 0.0
    assert not ev.data["typicality"]["inside"]
    assert ev.summary.startswith("Outside what this tool was validated for")
    heads = tools["classify"].invoke({"image_id": store.put(load_image(page)).id})
    assert heads.data["out_of_domain"] and heads.data["method"] == "trained-heads"
    # what a DICOM header says is not the library's extrapolation: it stands, and says that
    # the classifiers were not read (the page, flipped to be another image, with a CT's header)
    scan = load_image(page)
    flipped = np.ascontiguousarray(scan.display[:, ::-1])
    ref = store.put(LoadedImage(pixels=flipped, display=flipped, source_format="dicom", meta={
        "modality": "CT", "orientation": [1, 0, 0, 0, 1, 0]}))
    ev = tools["case_answer"].invoke({"image_id": ref.id, "question": "Describe this image"})
    assert ev.data["answer"] == "Axial CT" and ev.data["from_header"] and ev.score == 1.0
    assert not ev.data.get("out_of_domain") and not ev.data["typicality"]["inside"]
    assert "classifiers were not read: the image is unlike every image" in ev.summary
    ev = tools["case_answer"].invoke({"image_id": ref.id, "question": "Is this a CT scan?"})
    assert ev.data["answer"] == "yes" and ev.data["from_header"]
    ev = tools["case_answer"].invoke({"image_id": ref.id, "question": "Is there a mass?"})
    assert ev.data["out_of_domain"] and ev.data["answer"] is None  # the models' answers: not

    photo = medloop_home / "astronaut.png"  # a colour photograph: refused before it runs
    iio.imwrite(photo, skimage.data.astronaut())
    with pytest.raises(OutsideDomain, match="a colour image"):
        tools["case_answer"].invoke({"image_id": store.put(load_image(photo)).id,
                                     "question": "Is there a pneumothorax?"})

    # a real dev image is inside the floor of the library without it (leave one out)
    lib = open_case_library(SOURCE)
    try:
        vectors = library_image_vectors(lib)
        shown = sorted((MINI / "images").iterdir())[0]  # shrunk and re-encoded
        own = f"images/{shown.name}"
        floor = floor_of(np.stack([v for c, v in vectors.items() if c != own]))
        vec = lib.image_embedder.embed_images([load_image(shown).display])[0]
    finally:
        lib.close()
    assert floor is not None and typicality(floor, vec).inside
    real = tools["case_answer"].invoke({"image_id": store.put(load_image(shown)).id,
                                        "question": "Is this an MRI?"})
    assert real.data["typicality"]["inside"] and not real.data.get("out_of_domain")
