"""Case library: build, grow, search, persist, refuse other embedders, resume; the demo
library's real retrieval; the agent tools; the CLI; open_clip's shared space."""

from __future__ import annotations

import json
import re
import threading
import time

import cv2
import numpy as np
import pytest

from retrievers.build import build_from_rows, read_layout
from retrievers.embedders import Embedder, l2_normalise
from retrievers.library import CaseLibrary, EmbedderMismatch, NewCase
from tools.errors import ToolInputError


# ---------------------------------------------------------------------------------------------
# Small real embedders for the library's mechanics (fast, deterministic, no weights)
# ---------------------------------------------------------------------------------------------
class PixelEmbedder(Embedder):
    """The image shrunk to 16x16 grey, centred: crude but real image similarity."""

    name = "test-pixels-16"
    dim = 256
    modalities = frozenset({"image"})

    def __init__(self) -> None:
        self.calls = 0

    def load(self) -> None:
        pass

    def embed_images(self, images):
        self.calls += len(images)
        out = []
        for im in images:
            g = im if im.ndim == 2 else im[..., :3].mean(axis=2)
            v = cv2.resize(g.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA).ravel()
            out.append(v - v.mean())
        return l2_normalise(np.stack(out))


class WordsEmbedder(Embedder):
    """Hashed bag of words: texts sharing words are similar."""

    name = "test-words"
    dim = 128
    modalities = frozenset({"text"})

    def load(self) -> None:
        pass

    def embed_texts(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, sum(map(ord, w)) % self.dim] += 1
        return l2_normalise(out)


def _image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (size, size)).astype(np.uint8), (5, 5), 0)
    return img


def _cases(n: int, start: int = 0) -> list[NewCase]:
    findings = ["effusion", "nodule", "fracture", "normal"]
    return [NewCase(case_id=f"c{i}", display=_image(i), image=f"img{i}.png",
                    report=f"case {i} shows {findings[i % 4]} on the film",
                    labels=[findings[i % 4]], modality="CR" if i % 2 else "CT")
            for i in range(start, start + n)]


@pytest.fixture
def lib(tmp_path):
    lib = CaseLibrary.create(tmp_path / "lib", PixelEmbedder(), WordsEmbedder())
    lib.add(_cases(40))
    yield lib
    lib.close()


def _snapshot(lib: CaseLibrary) -> list:
    out = []
    for i in range(0, 40, 7):
        out.append([(h.case_id, round(h.score, 5)) for h in lib.search_image(_image(i), k=5)])
    out.append([(h.case_id, round(h.score, 5)) for h in lib.search_text("nodule film", k=5)])
    return out


def test_image_and_text_search_with_filters_and_scores(lib):
    hits = lib.search_image(_image(7), k=3)
    assert hits[0].case_id == "c7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].via == "image" and hits[0].image == "img7.png" and "normal" in hits[0].report
    assert hits[0].score >= hits[1].score >= hits[2].score
    ct = lib.search_image(_image(7), k=5, modality="ct")
    assert ct and all(h.modality == "CT" for h in ct) and "c7" not in {h.case_id for h in ct}
    frac = lib.search_image(_image(7), k=50, labels=["fracture"])
    assert len(frac) == 10 and all(h.labels == ["fracture"] for h in frac)
    text = lib.search_text("effusion", k=5)
    assert all("effusion" in h.report for h in text) and text[0].via == "report"
    with pytest.raises(ToolInputError, match=r"image-only"):
        lib.search_text("effusion", target="images")


def test_save_open_add_delete_round_trip_keeps_results_identical(lib, tmp_path):
    before = _snapshot(lib)
    lib.close()
    reopened = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder(),
                                writable=True)
    assert _snapshot(reopened) == before
    reopened.add(_cases(10, start=40))
    assert reopened.delete(["c0", "c7", "missing"]) == 2
    after = _snapshot(reopened)
    assert "c7" not in {c for row in after for c, _ in row}
    reopened.close()
    again = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder())
    assert _snapshot(again) == after and len(again) == 48
    with pytest.raises(ToolInputError, match="read-only"):
        again.add(_cases(1, start=99))
    again.close()


def test_another_embedder_is_refused(lib, tmp_path):
    lib.close()

    class OtherPixels(PixelEmbedder):
        name = "test-pixels-32"

    with pytest.raises(EmbedderMismatch, match="test-pixels-16"):
        CaseLibrary.open(tmp_path / "lib", OtherPixels(), WordsEmbedder())
    with pytest.raises(EmbedderMismatch, match="text embedder"):
        CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), PixelEmbedder())


def test_second_writer_is_refused_while_readers_are_not(lib, tmp_path):
    with pytest.raises(ToolInputError, match="another process is writing"):
        CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder(), writable=True)
    reader = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder())
    assert reader.search_image(_image(3), k=1)[0].case_id == "c3"


def test_concurrent_readers_while_a_writer_adds(lib, tmp_path):
    """Threads search the live library and re-open it from disk while the writer adds and
    saves: no error, every hit a complete case, the first cases always found."""
    errors: list[BaseException] = []
    done = threading.Event()
    counts = {"live": 0, "disk": 0}

    def live_reader() -> None:
        try:
            while not done.is_set():
                hits = lib.search_image(_image(5), k=5)
                assert hits[0].case_id == "c5" and all(h.report for h in hits)
                counts["live"] += 1
        except BaseException as exc:
            errors.append(exc)

    def disk_reader() -> None:
        try:
            while not done.is_set():
                r = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder())
                hits = r.search_image(_image(11), k=3)
                assert hits[0].case_id == "c11" and all(h.image for h in hits)
                r.close()
                counts["disk"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=live_reader), threading.Thread(target=disk_reader)]
    for t in threads:
        t.start()
    for start in range(40, 200, 20):
        lib.add(_cases(20, start=start))  # saves after each batch
    time.sleep(0.05)
    done.set()
    for t in threads:
        t.join()
    assert not errors, repr(errors[0])
    assert counts["live"] > 0 and counts["disk"] > 0 and len(lib) == 200


def _write_png(path, img) -> None:
    cv2.imwrite(str(path), img)


def test_layouts_and_a_resumed_build(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(12):
        _write_png(data / f"im{i}.png", _image(i, 40))
    (data / "im3.txt").write_text("small nodule right upper lobe")
    rows = read_layout(data)
    by_id = {r.case_id: r for r in rows}
    assert len(rows) == 12 and by_id["im3.png"].report == "small nodule right upper lobe"
    assert by_id["im4.png"].report is None
    with (data / "cases.jsonl").open("w") as f:
        for i in range(12):
            f.write(json.dumps({"image": f"im{i}.png", "report": f"report {i}",
                                "labels": ["a", "b"] if i % 2 else "c;d", "modality": "CR"}) + "\n")
    rows = read_layout(data)
    assert rows[1].labels == ("a", "b") and rows[2].labels == ("c", "d")
    assert rows[5].image == "im5.png" and rows[5].modality == "CR"
    (data / "cases.csv").write_text("image,report,labels\nim0.png,x,e;f\n,only text,\n")
    csv_rows = read_layout(data)
    assert [r.case_id for r in csv_rows] == ["im0.png", "row-2"] and csv_rows[0].labels == ("e", "f")
    (data / "cases.csv").unlink()

    class Interrupting(PixelEmbedder):
        def embed_images(self, images):
            if self.calls >= 8:
                raise KeyboardInterrupt
            return super().embed_images(images)

    first = CaseLibrary.create(tmp_path / "idx", Interrupting(), WordsEmbedder())
    with pytest.raises(KeyboardInterrupt):
        build_from_rows(first, rows, batch_size=4, checkpoint_s=0.0, progress=False)
    first.close()
    emb = PixelEmbedder()
    resumed = CaseLibrary.open(tmp_path / "idx", emb, WordsEmbedder(), writable=True)
    assert len(resumed) == 8  # two batches were checkpointed
    rep = build_from_rows(resumed, rows, batch_size=4, progress=False)
    assert rep.already_present == 8 and rep.added == 4 and emb.calls == 4
    assert len(resumed) == 12 and len(resumed.image_index) == 12
    assert resumed.search_image(_image(9, 40), k=1)[0].case_id == "im9.png"
    resumed.close()


def test_rows_written_without_their_vectors_are_dropped_on_reopen(lib, tmp_path):
    # Vectors of c40..c44 live only in memory (no save) when the process "dies".
    lib.add(_cases(5, start=40), save=False)
    lib.close()
    again = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder(), writable=True)
    assert len(again) == 40 and "c41" not in again.case_ids()
    again.add(_cases(5, start=40))
    assert again.search_image(_image(42), k=1)[0].case_id == "c42"
    again.close()


# ---------------------------------------------------------------------------------------------
# The demo library (real images, real reports, real embedders)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from retrievers.demo import demo_library

    return demo_library(tmp_path_factory.mktemp("demo-home"), max_reports=60)


def _augment(display: np.ndarray, seed: int) -> np.ndarray:
    """Crop 6 % off two sides, stretch contrast by 1.2, rotate by 4 degrees."""
    rng = np.random.default_rng(seed)
    h, w = display.shape[:2]
    dy, dx = int(0.06 * h), int(0.06 * w)
    oy, ox = rng.integers(0, 2, 2)
    img = display[oy * dy: h - (1 - oy) * dy, ox * dx: w - (1 - ox) * dx]
    img = np.clip((img.astype(np.float32) - 128) * 1.2 + 128, 0, 255).astype(np.uint8)
    hh, ww = img.shape[:2]
    rot = cv2.getRotationMatrix2D((ww / 2, hh / 2), 4.0, 1.0)
    return cv2.warpAffine(img, rot, (ww, hh), borderMode=cv2.BORDER_REFLECT)


@pytest.mark.slow
def test_augmented_copy_of_every_demo_image_finds_its_source_first(demo):
    from retrievers.demo import demo_image_rows
    from tools.ingest.loader import load_image

    rows = demo_image_rows()
    augmented = [_augment(load_image(r.image_path).display, i) for i, r in enumerate(rows)]
    vecs = demo.image_embedder.embed_images(augmented)
    for row, vec in zip(rows, vecs, strict=True):
        hits = demo.search_image(vector=vec, k=2)
        assert hits[0].case_id == row.case_id, (row.case_id, [(h.case_id, h.score) for h in hits])
        assert hits[0].score > hits[1].score


@pytest.mark.slow
@pytest.mark.parametrize("finding", ["pleural effusion", "pneumothorax", "atelectasis", "granuloma"])
def test_text_query_for_a_finding_returns_reports_that_mention_it(demo, finding):
    from retrievers.demo import nlmcxr_reports

    word = finding.split()[-1]
    in_library = sum(word in r.report.lower() for r in nlmcxr_reports(60) if r.report)
    hits = demo.search_text(finding, k=5)
    mention = [word in (h.report or "").lower() for h in hits]
    assert in_library >= 3 and mention[0], [(h.case_id, h.report) for h in hits]
    assert sum(mention) >= 3, [(h.case_id, h.report) for h in hits]
    assert all(h.via == "report" for h in hits)


@pytest.mark.slow
def test_similar_cases_report_lookup_and_knn_classify_tools(demo, store):
    from retrievers.demo import demo_image_rows
    from retrievers.knn_classify import knn_classify_tools
    from retrievers.similar import retrieval_tools
    from tools.ingest.loader import load_image

    chest = next(r for r in demo_image_rows() if r.case_id == "RG1_UNCI.dcm")
    ref = store.put(load_image(chest.image_path))
    tools = {t.name: t for t in [*retrieval_tools(store, lambda: demo),
                                 *knn_classify_tools(store, demo)]}
    ev = tools["similar_cases"].invoke({"image_id": ref.id, "k": 3})
    cases = ev.data["cases"]
    assert cases[0]["case_id"] == "RG1_UNCI.dcm" and cases[0]["score"] > 0.99
    assert ev.score == pytest.approx(cases[0]["score"], abs=1e-3)
    thumb = store.get_array(cases[0]["thumbnail_key"])
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 96
    only_mr = tools["similar_cases"].invoke({"image_id": ref.id, "k": 3, "modality": "MR"})
    assert {c["modality"] for c in only_mr.data["cases"]} == {"MR"}

    look = tools["report_lookup"].invoke({"query": "pleural effusion", "k": 5})
    assert look.data["mentions"] >= 3 and "effusion" in look.summary.lower()

    cls = tools["classify"].invoke({"image_id": ref.id, "k": 3})
    assert cls.data["labels"][0] == "chest" and cls.assertions[0].finding == "chest"
    weights = {n["case_id"]: max(n["score"], 0) for n in cls.data["neighbours"]}
    chest = sum(w for n in cls.data["neighbours"] if "chest" in n["labels"]
                for w in [weights[n["case_id"]]]) / sum(weights.values())
    assert cls.data["probabilities"][0] == pytest.approx(chest, abs=1e-3)


def test_default_tools_offer_retrieval_without_opening_the_library(store, medloop_home):
    from agent.planner.toolset import default_tools

    t0 = time.perf_counter()
    names = [t.name for t in default_tools(store)]
    assert {"similar_cases", "report_lookup", "classify"} <= set(names)
    assert names.count("classify") == 1
    assert not (medloop_home / "retrieval").exists()  # nothing built or opened yet
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_index_build_and_search_reports(tmp_path, capsys):
    from agent.cli.main import main

    data = tmp_path / "reports"
    data.mkdir()
    reports = ["Large right pleural effusion.", "Heart size is enlarged, cardiomegaly.",
               "No acute cardiopulmonary abnormality.", "Left apical pneumothorax."]
    (data / "cases.jsonl").write_text("".join(
        json.dumps({"case_id": f"r{i}", "report": r, "labels": ["x"]}) + "\n"
        for i, r in enumerate(reports)))
    out = tmp_path / "idx"
    assert main(["index", "build", str(data), "--out", str(out), "--image-embedder", "none",
                 "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 4 and summary["report_vectors"] == 4
    assert summary["text_embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384}
    assert summary["index_type"] == "flat"
    assert main(["index", "search", str(out), "--text", "collapsed lung", "-k", "2",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["case_id"] == "r3" and set(hits[0]) >= {"case_id", "score", "image", "report"}
    assert main(["index", "search", str(out), "--image", str(data / "cases.jsonl")]) == 2
    assert main(["index", "search", str(tmp_path / "nothing"), "--text", "x"]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# open_clip: a tiny randomly initialised model saved in the hub layout
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
    imgs = [np.stack([_image(i, 64)] * 3, axis=2) for i in range(6)]
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


def test_demo_library_builds_in_the_background_on_first_use(monkeypatch, tmp_path):
    """A tool never waits minutes for the first build: it is told to use other tools."""
    import threading
    import time

    import retrievers.demo as demo
    from retrievers.similar import default_library
    from tools.errors import ToolFailure, ToolInputError

    monkeypatch.delenv("MEDLOOP_LIBRARY", raising=False)
    calls: list[object] = []
    release = threading.Event()
    sentinel = object()

    def slow_build(home=None, **_):
        calls.append(home)
        if not demo._complete(demo.demo_path(home)):
            release.wait(20)
            demo.demo_path(home).mkdir(parents=True, exist_ok=True)
            (demo.demo_path(home) / "manifest.json").write_text('{"complete": true}')
        return sentinel

    monkeypatch.setattr(demo, "demo_library", slow_build)
    get = default_library(tmp_path / "home")
    t0 = time.perf_counter()
    for _ in range(2):  # asking again while it builds starts no second build
        with pytest.raises(ToolInputError, match="being built in the background"):
            get()
    assert time.perf_counter() - t0 < 2.0
    release.set()
    demo._BUILDS[demo.demo_path(tmp_path / "home")].join(20)
    assert get() is sentinel
    assert len(calls) == 2  # the background build, then the open once it was complete

    def broken(home=None, **_):
        raise OSError("disk full")

    monkeypatch.setattr(demo, "demo_library", broken)
    get = default_library(tmp_path / "other")
    with pytest.raises(ToolInputError):
        get()
    demo._BUILDS[demo.demo_path(tmp_path / "other")].join(20)
    with pytest.raises(ToolFailure, match="disk full"):
        get()
