"""The demo library's real retrieval: augmented copies find their source, findings find reports."""

from __future__ import annotations

import pytest

from tests.retrievers.helpers import (
    _augment,
)


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
