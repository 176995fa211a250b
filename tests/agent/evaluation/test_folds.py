"""k-fold splits by image on real VQA-RAD items: no image is both learnt from and scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.evaluation import load_suite
from agent.evaluation.folds import folds_by_image, image_groups, image_keys
from agent.evaluation.items import EvalItem

MINI = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "items.jsonl"


@pytest.fixture(scope="module")
def items() -> list[EvalItem]:
    return load_suite(str(MINI))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_image_is_on_both_sides_and_every_item_is_scored_once(items, k):
    folds = folds_by_image(items, k, seed=0)
    assert len(folds) == k
    scored = sorted(i for f in folds for i in f.scored)
    assert scored == list(range(len(items)))  # each item scored in exactly one fold
    for f in folds:
        assert sorted(f.fit + f.scored) == list(range(len(items)))
        fit_images = {im for i in f.fit for im in image_keys(items[i])}
        scored_images = {im for i in f.scored for im in image_keys(items[i])}
        assert fit_images and scored_images and not fit_images & scored_images
    # 12 images, near equal folds by item count
    sizes = [len(f.scored) for f in folds]
    assert max(sizes) - min(sizes) <= max(len(g) for g in image_groups(items))


def test_folds_are_fixed_by_the_seed(items):
    a = folds_by_image(items, 4, seed=1)
    assert a == folds_by_image(items, 4, seed=1)
    assert a != folds_by_image(items, 4, seed=2)


def test_items_sharing_any_image_are_grouped_transitively():
    # q1 and q2 share a.png, q2 and q3 share b.png: all three go together; q4 alone
    raw = [{"images": ["a.png"]}, {"images": ["a.png", "b.png"]}, {"images": ["b.png"]},
           {"images": ["c.png"]}, {"images": []}]
    assert sorted(sorted(g) for g in image_groups(raw)) == [[0, 1, 2], [3], [4]]
    folds = folds_by_image(raw, 5)
    assert len(folds) == 3  # fewer groups than k: the empty folds are dropped
    assert [0, 1, 2] in [f.scored for f in folds]


def test_in_memory_images_are_keyed_by_content():
    phantoms = load_suite("phantoms:4")
    twin = EvalItem(id="twin", question="?", answer="yes", images=[phantoms[0].images[0]])
    groups = image_groups([*phantoms, twin])
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2]


def test_k_below_two_is_refused(items):
    with pytest.raises(ValueError, match="k >= 2"):
        folds_by_image(items, 1)


def test_shuffled_by_image_keeps_each_images_questions_together() -> None:
    from agent.evaluation.folds import shuffled_by_image

    items = [{"id": i, "images": [f"im{i // 3}"]} for i in range(30)]
    out = shuffled_by_image(items, seed=1)
    assert sorted(it["id"] for it in out) == list(range(30))
    assert out != items and out == shuffled_by_image(items, seed=1)
    runs = [out[k]["images"][0] for k in range(0, 30, 3)]
    assert len(set(runs)) == 10  # groups of three consecutive items share their image
    assert all(out[k]["images"] == out[k + 1]["images"] == out[k + 2]["images"]
               for k in range(0, 30, 3))
