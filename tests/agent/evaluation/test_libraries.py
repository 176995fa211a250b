"""Cross-fitted case libraries: each item is answered by a library that never held its image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.evaluation.folds import folds_by_image
from agent.evaluation.libraries import fold_libraries
from agent.evaluation.readers import load_suite
from retrievers.answer_model import ANSWER_MODEL_FILE
from retrievers.heads import HEADS_FILE
from retrievers.vqa_library import library_image_vectors, load_qa, open_case_library

MINI = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"


def test_no_item_is_answered_by_a_library_holding_its_image(tmp_path: Path) -> None:
    items = load_suite(str(MINI))
    said: list[str] = []
    # thumbnails: the split is under test, not the embedder (the CLI uses the default one)
    library_of = fold_libraries(MINI, items, 3, 0, tmp_path, progress=said.append,
                                image_embedder="thumbnail-32")
    assert set(library_of) == {it.id for it in items}
    assert len(set(library_of.values())) == 3 and any("every image" in s for s in said)
    every = open_case_library(next(iter(library_of.values())).parent / "all")
    try:
        all_vectors = library_image_vectors(every)
    finally:
        every.close()
    folds = folds_by_image(items, 3, 0)
    for fold in folds:
        path = library_of[items[fold.scored[0]].id]
        lib = open_case_library(path)
        try:
            held = set(library_image_vectors(lib))
            scored = {Path(im).name for i in fold.scored for im in items[i].images}
            fitted = {Path(im).name for i in fold.fit for im in items[i].images}
            assert {Path(h).name for h in held} == fitted and not scored & fitted
            assert {Path(it.image).name for it in load_qa(path).items} == fitted
            # the fold's vectors are the whole set's: every image was embedded once
            for case, vec in library_image_vectors(lib).items():
                np.testing.assert_allclose(vec, all_vectors[case], atol=1e-6)
        finally:
            lib.close()
        assert (path / HEADS_FILE).exists() and (path / ANSWER_MODEL_FILE).exists()
    # built once: a second call reuses every library as it is
    stamp = {p: (p / ANSWER_MODEL_FILE).stat().st_mtime_ns for p in library_of.values()}
    assert fold_libraries(MINI, items, 3, 0, tmp_path, image_embedder="thumbnail-32") == library_of
    assert stamp == {p: (p / ANSWER_MODEL_FILE).stat().st_mtime_ns for p in library_of.values()}
    # ... except a per-kind table measured with other kinds, which is measured again
    from retrievers.question_kinds import RELIABILITY_FILE, table_is_current

    some = next(iter(library_of.values()))
    table = json.loads((some / RELIABILITY_FILE).read_text())
    (some / RELIABILITY_FILE).write_text(json.dumps(table | {"version": 1}))
    fold_libraries(MINI, items, 3, 0, tmp_path, image_embedder="thumbnail-32")
    assert table_is_current(some)
    assert stamp == {p: (p / ANSWER_MODEL_FILE).stat().st_mtime_ns for p in library_of.values()}
