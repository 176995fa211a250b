"""tools.vision.vlm: ``ask_image`` and ``draft_report`` over a scripted endpoint and a tiny LLaVA.

The privacy test ingests a real ultrasound DICOM (pydicom-data's ``US1_UNCI.dcm``, which has
an institution burned into its pixels) given a patient name in its header and the same name
drawn into its pixels, through the normal ingest, and checks that what reaches the VLM endpoint
holds neither: not in the request, not readable in the image it received.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file

from agent.planner.toolset import offered_specs, tool_specs
from tests.openai_server import server  # noqa: F401  (fixture)
from tests.tiny_vlm import tiny_vlm  # noqa: F401  (fixture)
from tools.errors import ToolInputError
from tools.evidence import Evidence
from tools.image import LoadedImage
from tools.ingest import ingest_path
from tools.ingest.burned_in import find_text
from tools.models.vlm import VlmReply
from tools.spec import ToolDeps, VisionConfig
from tools.store import ImageStore
from tools.vision.vlm import (
    MAX_SIDE,
    TOOLS,
    answer_evidence,
    crop_region,
    report_evidence,
    split_report,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "images"
NAME_IN_HEADER = "Doe^Janet"
NAME_IN_PIXELS = "DOE JANET 889977"


def _tools(store: ImageStore, vlm: str | None, **kw) -> dict:
    deps = ToolDeps(store, vision=VisionConfig(vlm=vlm, device="cpu", **kw))
    return {s.name: s.tool(deps) for s in TOOLS if s.enabled(deps)}


def _norm(text: str) -> str:
    return "".join(text.split()).upper()


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture(scope="module")
def phi_dicom(tmp_path_factory) -> Path:
    """US1_UNCI with a patient name in the header and burned into the pixels."""
    ds = pydicom.dcmread(get_testdata_file("US1_UNCI.dcm"))
    ds.PatientName = NAME_IN_HEADER
    ds.PatientID = "889977"
    rgb = ds.pixel_array.copy()  # (480, 640, 3) uint8
    canvas = Image.fromarray(rgb)
    ImageDraw.Draw(canvas).text((330, 420), NAME_IN_PIXELS, fill=(255, 255, 255),
                                font=ImageFont.load_default(size=26))
    ds.PixelData = np.asarray(canvas).tobytes()
    out = tmp_path_factory.mktemp("phi") / "us_with_name.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


# =============================================================================================
# Offered only with a VLM
# =============================================================================================
def test_offered_only_when_a_vlm_is_configured(store):
    none = ToolDeps(store)
    assert not any(s.enabled(none) for s in TOOLS)
    assert {"ask_image", "draft_report"}.isdisjoint(s.name for s in offered_specs(tool_specs(), none))
    configured = ToolDeps(store, vision=VisionConfig(vlm="openai:m@http://127.0.0.1:9/v1"))
    offered = {s.name for s in offered_specs(tool_specs(), configured)}
    assert {"ask_image", "draft_report"} <= offered
    [need] = TOOLS[0].needs(configured.vision)
    assert need.name == "openai-vlm"


# =============================================================================================
# Pure parts
# =============================================================================================
def test_crop_region_keeps_a_margin_and_refuses_bad_boxes():
    img = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    same, none = crop_region(img, None)
    assert same is img and none is None
    crop, box = crop_region(img, (50, 20, 150, 60))
    assert box == (35, 14, 165, 66)  # 15 % of 100 x 40 on each side
    assert crop.shape == (52, 130) and np.array_equal(crop, img[14:66, 35:165])
    _, edge = crop_region(img, (0, 0, 200, 100))
    assert edge == (0, 0, 200, 100)
    _, tiny = crop_region(img, (10, 10, 11, 11))
    assert tiny[2] - tiny[0] >= 8 and tiny[3] - tiny[1] >= 8
    with pytest.raises(ToolInputError, match="empty or inverted"):
        crop_region(img, (50, 20, 40, 60))
    with pytest.raises(ToolInputError, match="outside the image"):
        crop_region(img, (300, 20, 400, 60))


def test_split_report():
    text = "**Findings:** Clear lungs.\nNo effusion.\n\nImpression: Normal chest."
    assert split_report(text) == {"findings": "Clear lungs.\nNo effusion.",
                                  "impression": "Normal chest."}
    assert split_report("IMPRESSION: nothing acute") == {"findings": "",
                                                         "impression": "nothing acute"}
    assert split_report("free text") == {"findings": "", "impression": ""}


def _reply(text: str, *probs: float, tokens: tuple[str, ...] = ()) -> VlmReply:
    toks = tokens or tuple(text.split()[:len(probs)])
    return VlmReply(text=text, logprobs=tuple(math.log(p) for p in probs), token_texts=toks,
                    tokens=len(probs), model="openai:m@http://x/v1", finish_reason="stop",
                    elapsed_s=0.1)


def test_yes_no_answers_become_assertions_scored_by_their_token():
    yes = answer_evidence(_reply("Yes, the angle is blunted.", 0.8, 0.5, 0.5), "img-1",
                          "Is the angle blunted?", finding="pleural effusion")
    assert yes.score == pytest.approx(0.8) and yes.tool == "ask_image"
    [a] = yes.assertions
    assert a.finding == "pleural effusion" and a.present and a.probability == pytest.approx(0.8)
    assert "unverified model text" in yes.summary and "Yes, the angle is blunted." in yes.summary
    no = answer_evidence(_reply("No.", 0.7), "img-1", "Is it?", finding="pneumothorax")
    assert not no.assertions[0].present and no.assertions[0].probability == pytest.approx(0.3)
    # Not a yes/no answer: no assertion, the mean token probability as the score.
    free = answer_evidence(_reply("A round opacity.", 0.5, 0.2), "img-1", "What is it?",
                           finding="nodule")
    assert free.assertions == [] and free.score == pytest.approx(math.sqrt(0.1))
    # No finding named: no assertion even for yes/no.
    assert answer_evidence(_reply("Yes.", 0.9), "img-1", "Is it?").assertions == []
    # No token probabilities: no score, and the summary says why.
    bare = answer_evidence(VlmReply(text="Yes.", tokens=2, model="m"), "img-1", "Is it?",
                           finding="effusion")
    assert bare.score is None and bare.assertions[0].probability is None
    assert "no token probabilities" in bare.summary
    cut = answer_evidence(VlmReply(text="", tokens=0, model="m", finish_reason="time"),
                          "img-1", "Is it?")
    assert "gave no answer" in cut.summary and "time limit" in cut.summary


def test_report_evidence():
    ev = report_evidence(_reply("Findings: Clear lungs. Impression: Normal.", 0.6, 0.6),
                         "img-1", redacted=2)
    assert ev.tool == "draft_report" and ev.score == pytest.approx(0.6)
    assert ev.data["findings"] == "Clear lungs." and ev.data["impression"] == "Normal."
    assert ev.data["text_regions_redacted"] == 2 and ev.assertions == []
    assert "unverified model text" in ev.summary


# =============================================================================================
# Through the tools: what an endpoint receives
# =============================================================================================
def _received_image(request: dict) -> np.ndarray:
    [part] = [p for p in request["body"]["messages"][-1]["content"] if p["type"] == "image_url"]
    head, b64 = part["image_url"]["url"].split(",", 1)
    assert head == "data:image/png;base64"
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    assert img.format == "PNG"
    return np.asarray(img)


def test_no_phi_reaches_the_endpoint(server, store, phi_dicom):  # noqa: F811
    _img, [ref] = ingest_path(store, phi_dicom)
    stored = store.get(ref.id)
    assert NAME_IN_HEADER not in json.dumps(stored.meta)  # ingest de-identified the header
    seen = {_norm(r.text) for r in find_text(stored.display)}
    assert _norm(NAME_IN_PIXELS) in seen and "BAPTISTMEDCTR" in seen  # the premise: both burned in
    server.replies.append({"content": "No, the angle is sharp.",
                           "logprobs": {"content": [{"token": "No", "logprob": math.log(0.75)}]}})
    server.reply_text("Findings: unremarkable. Impression: normal.")
    tools = _tools(store, f"openai:tiny-vlm@{server.url}", vlm_api_key="sk-test")
    ev = tools["ask_image"].invoke({"image_id": ref.id, "question": "Is the angle blunted?",
                                    "finding": "pleural effusion"})
    report = tools["draft_report"].invoke({"image_id": ref.id})
    assert isinstance(ev, Evidence) and isinstance(report, Evidence)
    assert len(server.requests) == 2
    for req in server.requests:
        received = _received_image(req)
        # Everything sent but the image's own base64 (where any three letters occur by chance).
        raw = json.dumps(req).replace(req["body"]["messages"][-1]["content"][0]["image_url"]
                                      ["url"], "<image>")
        assert "<image>" in raw
        for secret in ("Doe", "Janet", "DOE", "JANET", "889977", "BAPTIST"):
            assert secret not in raw
        assert received.shape[:2] == stored.display.shape[:2]
        assert find_text(received) == []  # nothing left to read
    assert ev.score == pytest.approx(0.75) and ev.data["text_regions_redacted"] >= 2
    assert not ev.assertions[0].present and ev.assertions[0].probability == pytest.approx(0.25)
    assert report.score is None and report.data["impression"] == "normal."


def test_ask_about_a_region(server, store):  # noqa: F811
    _img, [ref] = ingest_path(store, sorted(FIXTURE.glob("*.jpg"))[0])
    h, w = store.get(ref.id).display.shape[:2]
    server.reply_text("Yes.")
    tool = _tools(store, f"openai:m@{server.url}")["ask_image"]
    box = [w * 0.25, h * 0.25, w * 0.5, h * 0.5]
    ev = tool.invoke({"image_id": ref.id, "question": "Is there a mass here?", "box": box})
    received = _received_image(server.requests[0])
    x0, y0, x1, y1 = ev.data["region"]
    assert received.shape[:2] == (y1 - y0, x1 - x0) and (x1 - x0) < w
    assert ev.boxes[0].xyxy == (x0, y0, x1, y1)
    assert "crop of the region" in server.requests[0]["body"]["messages"][-1]["content"][1]["text"]
    with pytest.raises(ToolInputError, match="unknown image id"):
        tool.invoke({"image_id": "img-000000000000", "question": "Is it?"})
    with pytest.raises(ToolInputError, match="outside the image"):
        tool.invoke({"image_id": ref.id, "question": "Is it?", "box": [w + 1, 0, w + 9, 9]})


def test_large_images_are_shrunk_before_sending(server, store):  # noqa: F811
    ramp = np.tile(np.linspace(0, 255, 1200).astype(np.uint8), (900, 1))  # (900, 1200)
    ref = store.put(LoadedImage(pixels=ramp.astype(np.float32), display=ramp,
                                source_format="png"))
    server.reply_text("Findings: x. Impression: y.")
    _tools(store, f"openai:m@{server.url}")["draft_report"].invoke({"image_id": ref.id})
    received = _received_image(server.requests[0])
    assert received.shape == (768, MAX_SIDE)  # the long side to 1024, the aspect kept


# =============================================================================================
# Through the tools: a local transformers VLM
# =============================================================================================
def test_tiny_llava_through_the_tools(store, tiny_vlm):  # noqa: F811
    _img, [ref] = ingest_path(store, sorted(FIXTURE.glob("*.jpg"))[0])
    tools = _tools(store, f"hf:{tiny_vlm}")
    ev = tools["ask_image"].invoke({"image_id": ref.id, "question": "Is there a fracture?",
                                    "finding": "fracture"})
    assert ev.tool == "ask_image" and ev.status == "ok" and ev.image_id == ref.id
    assert ev.score is not None and 0.0 <= ev.score <= 1.0
    assert 1 <= ev.data["tokens"] <= 96 and ev.data["model"] == f"hf:{tiny_vlm}"
    assert 0.0 < ev.data["mean_token_prob"] <= 1.0 and ev.elapsed_s > 0
    assert "unverified model text" in ev.summary or "gave no answer" in ev.summary
    report = tools["draft_report"].invoke({"image_id": ref.id, "indication": "trauma"})
    assert report.tool == "draft_report" and 0.0 <= report.score <= 1.0
    assert 1 <= report.data["tokens"] <= 320 and set(report.data) >= {"findings", "impression"}
