"""Building a library from folder layouts, and resuming an interrupted build."""

from __future__ import annotations

import json

import pytest

from retrievers.build import build_from_rows, read_layout
from retrievers.library import CaseLibrary
from tests.retrievers.helpers import (
    PixelEmbedder,
    WordsEmbedder,
    _image,
    _write_png,
)


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


def test_a_build_asked_to_stop_saves_what_it_added_and_resumes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(12):
        _write_png(data / f"im{i}.png", _image(i, 40))
    rows = read_layout(data)
    lib = CaseLibrary.create(tmp_path / "idx", PixelEmbedder(), WordsEmbedder())
    asked = []

    def stop() -> bool:  # asked before each batch: stop before the third
        asked.append(1)
        return len(asked) > 2

    rep = build_from_rows(lib, rows, batch_size=4, progress=False, stop=stop)
    assert rep.stopped and rep.added == 8
    lib.close()
    resumed = CaseLibrary.open(tmp_path / "idx", PixelEmbedder(), WordsEmbedder(), writable=True)
    assert len(resumed) == 8  # saved on the way out
    rep = build_from_rows(resumed, rows, batch_size=4, progress=False)
    assert not rep.stopped and rep.already_present == 8 and rep.added == 4
    resumed.close()
