"""tools.ingest.burned_in: OCR on text drawn with Pillow, then on a real ultrasound with burned-in text."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file

from tools.errors import ToolInputError
from tools.evidence import Evidence
from tools.image import LoadedImage
from tools.ingest.burned_in import (
    TextRegion,
    burned_in_tools,
    find_text,
    identifier_kind,
    redact,
    text_evidence,
)
from tools.ingest.loader import load_image
from tools.store import ImageStore

# (text, top-left (x, y)) drawn white on black at 40 px; one line each, well apart.
LINES = [("ABC HOSPITAL", (20, 15)), ("John Smith", (20, 85)), ("12/03/2019", (20, 155)),
         ("LEFT", (520, 85))]


# Tests that run the OCR model (~0.3 s to load, ~0.5 s per 640x480 frame on 2 cores).
slow = pytest.mark.slow


def _norm(s: str) -> str:
    return "".join(s.split()).upper()


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    img = Image.new("L", (720, 220), 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    for text, xy in LINES:
        draw.text(xy, text, fill=255, font=font)
    return np.asarray(img)


@pytest.fixture(scope="module")
def drawn_regions(drawn: np.ndarray) -> list[TextRegion]:
    return find_text(drawn)


@slow
def test_reads_drawn_text_back(drawn_regions: list[TextRegion]) -> None:
    read = {_norm(r.text): r for r in drawn_regions}
    for text, (x, y) in LINES:
        assert _norm(text) in read, f"OCR missed {text!r}; read {sorted(read)}"
        r = read[_norm(text)]
        x0, y0, x1, y1 = r.box
        # the box is where the text was drawn (Pillow's 40 px font: ~30-45 px tall)
        assert abs(x0 - x) <= 8 and y0 <= y + 15 and y1 >= y + 25 and x1 > x0 + 40
        assert 0.5 <= r.score <= 1.0


@slow
def test_rgb_gives_the_same_text(drawn: np.ndarray, drawn_regions: list[TextRegion]) -> None:
    rgb = np.stack([drawn] * 3, axis=-1)
    assert sorted(_norm(r.text) for r in find_text(rgb)) == sorted(
        _norm(r.text) for r in drawn_regions
    )


@slow
def test_redact_removes_all_text(drawn: np.ndarray, drawn_regions: list[TextRegion]) -> None:
    out = redact(drawn, drawn_regions)
    assert out.shape == drawn.shape and out.dtype == drawn.dtype
    assert drawn.max() == 255  # the input is untouched
    assert find_text(out) == []
    # only the boxes (plus padding) were blacked out: pixels outside keep their values
    mask = np.zeros(drawn.shape, bool)
    for r in drawn_regions:
        x0, y0, x1, y1 = r.box
        mask[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
    assert np.array_equal(out[~mask], drawn[~mask]) and not out[mask].any()


@slow
def test_blank_image_has_no_text() -> None:
    assert find_text(np.zeros((100, 200), np.uint8)) == []
    ev = text_evidence([], "img-000000000000")
    assert ev.summary == "no text found." and ev.score is None and ev.boxes == []


def test_refuses_non_uint8() -> None:
    with pytest.raises(ToolInputError):
        find_text(np.zeros((50, 50), np.float32))
    with pytest.raises(ToolInputError):
        find_text(np.zeros((2, 50, 50), np.uint8))


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("John Smith", "name-like"),
        ("SMITH^JOHN", "name-like"),
        ("SMITH, JOHN", "name-like"),
        ("Dr. Who", "name-like"),
        ("12/03/2019", "date-like"),
        ("2019-03-12", "date-like"),
        ("20190312", "date-like"),
        ("12 MAR 2019", "date-like"),
        ("MRN8675309", "id-like"),
        ("123-45-6789", "id-like"),
        ("1234567", "id-like"),
        ("DOB:", "labelled"),
        ("ABC HOSPITAL", "institution-like"),
        ("BAPTIST MED CTR", "institution-like"),
        ("LEFT", None),
        ("PWR", None),
        ("LYMPH NODE", None),
        ("+2:09:04", None),
        ("CINE 0118", None),
        ("TIS<0.4MI=0.8", None),
    ],
)
def test_identifier_kind(text: str, kind: str | None) -> None:
    assert identifier_kind(text) == kind


@slow
def test_read_text_tool_hides_identifiers(store: ImageStore, drawn: np.ndarray) -> None:
    ref = store.put(LoadedImage(pixels=drawn.astype(np.float32), display=drawn,
                                meta={"modality": "OT"}, source_format="synthetic"))
    (tool,) = burned_in_tools(store)
    assert tool.name == "read_text"
    ev = tool.invoke({"image_id": ref.id})
    assert isinstance(ev, Evidence) and ev.tool == "read_text" and ev.image_id == ref.id
    for secret in ("John", "Smith", "12/03/2019", "2019", "HOSPITAL"):
        assert secret.upper() not in ev.summary.upper()
        assert all(secret.upper() not in b.label.upper() for b in ev.boxes)
    assert "[redacted: name-like]" in ev.summary and "[redacted: date-like]" in ev.summary
    assert "'LEFT'" in ev.summary and "3 possible identifiers" in ev.summary
    assert {b.label for b in ev.boxes} == {"", "LEFT"}
    assert len(ev.boxes) == 4 and ev.score is not None and 0.5 <= ev.score <= 1.0
    assert ev.data["possible_identifiers"] == 3
    assert "John" not in str(ev.data)


def test_read_text_unknown_image(store: ImageStore) -> None:
    (tool,) = burned_in_tools(store)
    with pytest.raises(ToolInputError):
        tool.invoke({"image_id": "img-000000000000"})


@slow
def test_ultrasound_burned_in_text() -> None:
    img = load_image(get_testdata_file("US1_UNCI.dcm"))
    find_text(img.display)  # warm-up: the first call loads the model
    t0 = time.perf_counter()
    regions = find_text(img.display)
    elapsed = time.perf_counter() - t0
    texts = [_norm(r.text) for r in regions]
    assert "BAPTISTMEDCTR" in texts  # the institution, burned into the pixels
    assert len(regions) >= 10 and texts.count("PWR") >= 2
    assert elapsed < 10  # ~0.5 s on 2 CPU cores
    h, w = img.display.shape[:2]
    assert all(0 <= r.box[0] < r.box[2] <= w and 0 <= r.box[1] < r.box[3] <= h for r in regions)
    ev = text_evidence(regions, "img-000000000000")
    assert "BAPTIST" not in ev.summary and "[redacted: institution-like]" in ev.summary
    assert find_text(redact(img.display, regions)) == []
