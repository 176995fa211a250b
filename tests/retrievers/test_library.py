"""The case library: search with filters, persist, grow, refuse other embedders and a second
writer, readers beside a writer, rows without vectors dropped on reopen."""

from __future__ import annotations

import threading
import time

import pytest

from retrievers.library import CaseLibrary, EmbedderMismatch
from tests.retrievers.helpers import (
    PixelEmbedder,
    WordsEmbedder,
    _cases,
    _image,
    _snapshot,
)
from tools.errors import ToolInputError


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


def test_rows_written_without_their_vectors_are_dropped_on_reopen(lib, tmp_path):
    # Vectors of c40..c44 live only in memory (no save) when the process "dies".
    lib.add(_cases(5, start=40), save=False)
    lib.close()
    again = CaseLibrary.open(tmp_path / "lib", PixelEmbedder(), WordsEmbedder(), writable=True)
    assert len(again) == 40 and "c41" not in again.case_ids()
    again.add(_cases(5, start=40))
    assert again.search_image(_image(42), k=1)[0].case_id == "c42"
    again.close()


def test_a_library_without_reports_refuses_report_search_for_good(tmp_path):
    """Terminal, not "fix the arguments": no wording finds reports that were never indexed."""
    from tools.errors import ToolFailure

    lib = CaseLibrary.create(tmp_path / "images-only", PixelEmbedder())
    lib.add(_cases(4))
    with pytest.raises(ToolFailure, match="no report index"):
        lib.search_text("effusion", k=3, target="reports")
    lib.close()
