"""The shipped case library: what it holds, its one-time install, and telling its own images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrievers import shipped_library
from retrievers.shipped_library import (
    IMAGES_FILE,
    SOURCE,
    answers_getter,
    file_digest,
    image_digests,
    install,
    overlapping,
    shipped,
)
from tools.store import ImageStore

MINI = Path("tests/fixtures/vqa_rad_mini")


def test_it_holds_the_dev_sets_pairs_and_its_images_digests():
    assert shipped() == SOURCE
    qa = [json.loads(x) for x in (SOURCE / "qa.jsonl").read_text().splitlines() if x.strip()]
    assert len(qa) == json.loads((SOURCE / "qa.json").read_text())["pairs"] == 988
    images = {q["image"] for q in qa}
    assert len(images) == 111 and len(image_digests()) == len(image_digests().dhash) == 111
    assert len(np.load(SOURCE / "qa_vectors.npy")) == 988
    manifest = json.loads((SOURCE / "manifest.json").read_text())
    assert manifest["image_embedder"]["name"] == "litemedsam-max-v1"
    for name in ("heads.json", "answer_model.json", "reliability.json", "README.md"):
        assert (SOURCE / name).is_file(), name
    assert "CC0" in (SOURCE / "README.md").read_text()
    # measured with this version's kinds: a change to them is measured again before it ships
    from retrievers.question_kinds import table_is_current
    assert table_is_current(SOURCE)


def test_install_copies_once_under_home_and_never_half(tmp_path):
    dest = install(tmp_path)
    assert dest.parent == tmp_path / "libraries" and dest.name.startswith("vqa-rad-dev-")
    assert file_digest(dest / "cases.sqlite") == file_digest(SOURCE / "cases.sqlite")
    stamp = (dest / "qa.jsonl").stat().st_mtime_ns
    assert install(tmp_path) == dest and (dest / "qa.jsonl").stat().st_mtime_ns == stamp
    assert not list((tmp_path / "libraries").glob(".*.tmp"))  # the scratch copy was renamed


def test_every_file_it_lists_is_there_as_built(tmp_path):
    """What a fresh checkout carries: every listed file, with the digest it was built with."""
    contents = json.loads((SOURCE / shipped_library.CONTENTS_FILE).read_text())
    assert {"cases.sqlite", "qa.jsonl", "image.vec", "heads.json"} <= set(contents)
    assert {p.name for p in SOURCE.iterdir() if p.is_file()} == {
        *contents, shipped_library.CONTENTS_FILE}
    assert all(file_digest(SOURCE / n) == d for n, d in contents.items())


def test_an_incomplete_or_damaged_library_is_a_clear_error_naming_the_file(tmp_path):
    import shutil

    lib = tmp_path / "vqa-rad-dev"
    shutil.copytree(SOURCE, lib)
    (lib / "cases.sqlite").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: cases\.sqlite missing"):
        install(tmp_path / "home", lib)
    shutil.copy(SOURCE / "cases.sqlite", lib)
    with (lib / "heads.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match=r"damaged: heads\.json differ"):
        install(tmp_path / "home", lib)
    assert not (tmp_path / "home" / "libraries").exists()  # nothing half-installed
    (lib / shipped_library.CONTENTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"contents\.json is missing"):
        install(tmp_path / "home", lib)


def test_a_missing_shipped_library_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped_library, "SOURCE", tmp_path / "gone")
    assert shipped_library.shipped() is None
    with pytest.raises(FileNotFoundError, match="no shipped case library"):
        shipped_library.install(tmp_path / "home")


def test_it_knows_its_own_images_by_content_shrunk_or_renamed(tmp_path):
    from PIL import Image

    fixture = sorted((MINI / "images").iterdir())  # dev images, shrunk and re-encoded
    assert fixture and set(overlapping(fixture)) == {str(p) for p in fixture}
    renamed = tmp_path / "renamed.png"
    Image.open(fixture[0]).save(renamed)  # another name, another format, the same picture
    other = tmp_path / fixture[0].name  # the same name, another picture
    other.write_bytes(fixture[1].read_bytes())
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "flat.png")
    Image.fromarray(np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)).save(
        tmp_path / "ramp.png")
    unseen = [tmp_path / "flat.png", tmp_path / "ramp.png", tmp_path / "missing.jpg"]
    assert overlapping([renamed, *unseen]) == [str(renamed)]
    assert overlapping([other]) == [str(other)]  # found as fixture[1], whatever its name
    assert overlapping([renamed], source=tmp_path) == []  # a library without fingerprints
    rows = [json.loads(x) for x in (SOURCE / IMAGES_FILE).read_text().splitlines()]
    assert len(rows) == 111 and all(len(r["sha256"]) == 64 and r["dhash"] for r in rows)


def test_two_different_pictures_differ_in_many_bits():
    from retrievers.shipped_library import NEAR_BITS, difference_hash

    a, b = sorted((MINI / "images").iterdir())[:2]
    ha, hb = difference_hash(a), difference_hash(b)
    assert ha is not None and hb is not None and (ha ^ hb).bit_count() > 2 * NEAR_BITS
    assert difference_hash(Path("README.md")) is None  # not a picture


@pytest.mark.slow
def test_case_answer_over_the_shipped_library_answers_real_images_and_refuses_phantoms(
        medloop_home, tmp_path):
    """The real code path: LiteMedSAM and MiniLM over the installed copy."""
    from agent.context import AgentContext
    from agent.planner.toolset import default_tools
    from tests.conftest import phantom
    from tools.errors import ToolInputError
    from tools.ingest.loader import load_image

    store = ImageStore(medloop_home / "store")
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu")
    tool = next(t for t in default_tools(ctx, store) if t.name == "case_answer")
    ref = store.put(load_image(sorted((MINI / "images").iterdir())[0]))
    ev = tool.invoke({"image_id": ref.id, "question": "Is this an MRI?"})
    assert ev.status == "ok" and ev.data["library"].startswith(str(medloop_home / "libraries"))
    assert ev.data.get("yes_no") in ("yes", "no") or ev.data.get("withheld")
    assert answers_getter(SOURCE, medloop_home)() is answers_getter(SOURCE, medloop_home)()
    synthetic = store.put(phantom())
    with pytest.raises(ToolInputError, match="not a clinical image"):
        tool.invoke({"image_id": synthetic.id, "question": "Is there a lesion?"})


def test_its_tools_take_grey_ct_mr_and_radiographs_and_refuse_other_modalities_and_colour():
    from retrievers.similar import SHIPPED_DOMAIN
    from tools.domain import ImageFacts
    from tools.errors import OutsideDomain

    for modality in ("CT", "MR", "CR", "DX"):
        assert SHIPPED_DOMAIN.screen(ImageFacts(modality=modality, source_format="dicom",
                                                colour=0.0), "case_answer") is None
    # a JPEG records no modality: its pixels and the library's floor decide
    assert SHIPPED_DOMAIN.screen(ImageFacts(source_format="jpeg", colour=0.004),
                                 "case_answer") is None
    for modality in ("US", "MG", "NM", "RTDOSE"):
        with pytest.raises(OutsideDomain, match=f"modality is {modality}"):
            SHIPPED_DOMAIN.screen(ImageFacts(modality=modality, source_format="dicom"),
                                  "case_answer")
    with pytest.raises(OutsideDomain, match="a colour image"):
        SHIPPED_DOMAIN.screen(ImageFacts(modality="CT", source_format="dicom", colour=0.3),
                              "case_answer")
