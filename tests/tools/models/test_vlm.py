"""tools.models.vlm: a tiny LLaVA through the real transformers path, and an OpenAI endpoint.

The transformers tests build a randomly initialised LLaVA-architecture model and its processor
offline (``tests/tiny_vlm.py``), save them, and load them the way a user's checkpoint loads
(``AutoModelForImageTextToText`` / ``AutoProcessor``). Its words are gibberish, so what is
checked is structure: text, one log-probability per generated token, scores in [0, 1], the
token and time limits. The endpoint tests run a scripted OpenAI-compatible server on the
loopback (``tests/openai_server.py``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.openai_server import server  # noqa: F401  (fixture)
from tests.tiny_vlm import tiny_vlm, tiny_vlm_no_system  # noqa: F401  (fixtures)
from tools.errors import ToolFailure
from tools.models.registry import is_loaded
from tools.models.vlm import (
    HfVlm,
    OpenAIVlm,
    VlmReply,
    VlmSpec,
    configured_vlm,
    png_base64,
    vlm_client,
)
from tools.spec import VisionConfig

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "images"


def _real_image() -> np.ndarray:
    """A real radiology image from the VQA-RAD fixture, as a uint8 array."""
    path = sorted(FIXTURE.glob("*.jpg"))[0]
    return np.asarray(Image.open(path).convert("RGB"))


# =============================================================================================
# Specs, replies, images
# =============================================================================================
def test_spec_forms():
    assert VlmSpec.parse("hf:google/medgemma-4b-it") == VlmSpec("hf", "google/medgemma-4b-it")
    assert VlmSpec.parse("openai:qwen2.5vl:7b@http://127.0.0.1:11434/v1/") == VlmSpec(
        "openai", "qwen2.5vl:7b", "http://127.0.0.1:11434/v1")
    for bad in ("medgemma", "hf:", "openai:model", "openai:@http://x/v1", "openai:m@ftp://x",
                "gguf:/x.gguf"):
        with pytest.raises(ValueError, match="bad VLM"):
            VlmSpec.parse(bad)
        with pytest.raises(ValueError, match="vlm must be"):
            VisionConfig(vlm=bad)


def test_reply_scores():
    reply = VlmReply(text="No, clear.", logprobs=(math.log(0.9), math.log(0.5), math.log(0.2)),
                     token_texts=(" ", "No", ","), tokens=3)
    # The lead token is the first with a letter: "No", not the leading space.
    assert reply.lead_token_prob == pytest.approx(0.5)
    assert reply.mean_token_prob == pytest.approx((0.9 * 0.5 * 0.2) ** (1 / 3))
    empty = VlmReply(text="x", tokens=4)
    assert empty.mean_token_prob is None and empty.lead_token_prob is None
    # Servers round: a logprob a hair above 0 is still a probability of 1, -inf is 0.
    odd = VlmReply(text="x", logprobs=(1e-9, -math.inf), token_texts=("a", "b"))
    assert odd.lead_token_prob == 1.0 and 0.0 <= odd.mean_token_prob <= 1.0


def test_png_has_the_pixels_and_nothing_else():
    img = _real_image()
    raw = base64.b64decode(png_base64(img))
    back = Image.open(io.BytesIO(raw))
    assert back.format == "PNG" and np.array_equal(np.asarray(back), img)
    assert not back.info.get("dpi") and not getattr(back, "text", {})  # no text chunks
    grey = np.zeros((5, 7), np.uint8)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64(grey))))).shape == (5, 7)
    with pytest.raises(ValueError, match="uint8"):
        png_base64(np.zeros((5, 7), np.float32))


def test_configured_vlm_rows():
    assert configured_vlm(VisionConfig()) is None
    hf = configured_vlm(VisionConfig(vlm="hf:google/medgemma-4b-it"))
    assert hf is not None and hf.ref == "google/medgemma-4b-it" and hf.device == "gpu"
    assert hf.cache_key == "hf-vlm:google/medgemma-4b-it"
    ep = configured_vlm(VisionConfig(vlm="openai:m@http://h:8000/v1"))
    assert ep is not None and ep.name == "openai-vlm" and ep.ref == "m@http://h:8000/v1"
    with pytest.raises(ToolFailure, match="MEDLOOP_VLM"):
        vlm_client(VisionConfig())
    client = vlm_client(VisionConfig(vlm="openai:m@http://h:8000/v1", vlm_api_key="sk-x"))
    assert isinstance(client, OpenAIVlm) and client.remote and client.api_key == "sk-x"
    assert "sk-x" not in repr(client) and "sk-x" not in repr(VisionConfig(vlm_api_key="sk-x"))


# =============================================================================================
# Transformers
# =============================================================================================
def test_tiny_llava_through_the_real_loading_path(tiny_vlm):  # noqa: F811
    vlm = HfVlm(str(tiny_vlm), device="cpu")
    assert not vlm.remote and not vlm.loaded
    t0 = time.perf_counter()
    reply = vlm.generate(_real_image(), "Is the costophrenic angle blunted?",
                         system="Answer briefly.", max_new_tokens=6)
    assert time.perf_counter() - t0 < 60
    assert vlm.loaded and is_loaded(f"hf-vlm:{tiny_vlm}:cpu")
    assert isinstance(reply.text, str) and reply.model == f"hf:{tiny_vlm}"
    assert 1 <= reply.tokens <= 6 and len(reply.logprobs) == len(reply.token_texts) == reply.tokens
    assert all(lp <= 0.0 for lp in reply.logprobs)
    assert 0.0 < reply.mean_token_prob <= 1.0 and 0.0 < reply.lead_token_prob <= 1.0
    assert reply.finish_reason in ("stop", "length") and reply.elapsed_s > 0
    # Greedy: the same question gives the same reply (the model stays loaded).
    again = vlm.generate(_real_image(), "Is the costophrenic angle blunted?",
                         system="Answer briefly.", max_new_tokens=6)
    assert again.text == reply.text and again.logprobs == pytest.approx(reply.logprobs)
    # Grey images are fed as RGB.
    grey = vlm.generate(_real_image()[..., 0], "Describe.", max_new_tokens=3)
    assert 1 <= grey.tokens <= 3


def test_time_limit_stops_generation(tiny_vlm):  # noqa: F811
    vlm = HfVlm(str(tiny_vlm), device="cpu", max_time_s=1e-6)
    reply = vlm.generate(_real_image(), "Describe.", max_new_tokens=50)
    assert reply.finish_reason == "time" and reply.tokens < 50


def test_template_without_a_system_role_gets_the_instructions_in_the_user_turn(
        tiny_vlm_no_system):  # noqa: F811
    vlm = HfVlm(str(tiny_vlm_no_system), device="cpu")
    _model, processor = vlm.model()
    with pytest.raises(Exception, match="System role not supported"):
        processor.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)
    text = vlm._prompt_text(processor, "Is it?", "Answer briefly.")
    assert "system" not in text and "Answer briefly.\n\nIs it?" in text
    reply = vlm.generate(_real_image(), "Is it?", system="Answer briefly.", max_new_tokens=3)
    assert 1 <= reply.tokens <= 3


def test_a_folder_that_is_not_a_vlm_fails_naming_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ToolFailure, match=r"VLM .* could not be loaded"):
        HfVlm(str(tmp_path), device="cpu").model()
    with pytest.raises(ToolFailure, match="could not be loaded"):
        HfVlm(str(tmp_path / "missing"), device="cpu").model()


# =============================================================================================
# OpenAI-compatible endpoint
# =============================================================================================
def _logprobs(*pairs: tuple[str, float]) -> dict:
    return {"content": [{"token": t, "logprob": math.log(p), "top_logprobs": []}
                        for t, p in pairs]}


def test_endpoint_gets_a_png_and_returns_logprobs(server):  # noqa: F811
    server.replies.append({"content": "Yes, blunted.",
                           "logprobs": _logprobs(("Yes", 0.8), (",", 0.9), (" blunted", 0.5))})
    img = _real_image()
    vlm = OpenAIVlm("tiny-vlm", server.url, api_key="sk-test", timeout_s=10)
    reply = vlm.generate(img, "Is the angle blunted?", system="Answer briefly.",
                         max_new_tokens=20)
    assert reply.text == "Yes, blunted." and reply.tokens == 3
    assert reply.lead_token_prob == pytest.approx(0.8)
    assert reply.model == f"openai:tiny-vlm@{server.url}" and reply.finish_reason == "stop"
    [req] = server.requests
    body = req["body"]
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert body["model"] == "tiny-vlm" and body["logprobs"] is True
    assert body["max_tokens"] == 20 and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    assert parts[1]["text"] == "Is the angle blunted?"
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and np.array_equal(np.asarray(sent), img)


def test_endpoint_without_logprobs_support(server):  # noqa: F811
    server.reply_error(400, "logprobs is not supported")
    server.reply_text("No.")
    server.reply_text("No again.")
    vlm = OpenAIVlm("m", server.url, timeout_s=10)
    reply = vlm.generate(_real_image(), "Is it?")
    assert reply.text == "No." and reply.logprobs == () and reply.mean_token_prob is None
    assert reply.tokens == 7  # from the server's usage
    assert [r["body"].get("logprobs") for r in server.requests] == [True, None]
    assert "authorization" not in server.requests[0]["headers"]  # no key, no header
    vlm.generate(_real_image(), "Is it?")  # no longer asks for them
    assert "logprobs" not in server.requests[-1]["body"]


def test_endpoint_errors_name_the_problem(server):  # noqa: F811
    server.reply_error(500, "model not loaded")
    vlm = OpenAIVlm("m", server.url, timeout_s=10)
    with pytest.raises(ToolFailure, match=r"answered HTTP 500: model not loaded"):
        vlm.generate(_real_image(), "Is it?")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ToolFailure, match="could not be reached"):
        OpenAIVlm("m", f"http://127.0.0.1:{port}/v1", timeout_s=10).generate(
            _real_image(), "Is it?")
    assert time.perf_counter() - t0 < 5


def test_endpoint_that_never_answers_times_out(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                conn, _ = listener.accept()
                held.append(conn)  # read nothing, answer nothing
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        t0 = time.perf_counter()
        with pytest.raises(ToolFailure, match=r"did not answer within 1 s"):
            OpenAIVlm("m", url, timeout_s=1.0).generate(_real_image(), "Is it?")
        assert time.perf_counter() - t0 < 4
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_endpoint_reply_that_is_not_a_completion(server):  # noqa: F811
    server.replies.append({"content": {"not": "text"}})
    with pytest.raises(ToolFailure, match="not a chat completion"):
        OpenAIVlm("m", server.url, timeout_s=10).generate(_real_image(), "Is it?")
