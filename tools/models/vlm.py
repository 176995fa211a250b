"""Vision-language models (VLMs): one image and a question in, text and token probabilities out.

Two backends, chosen by ``VisionConfig.vlm`` (``MEDLOOP_VLM``):

* ``hf:ID_OR_PATH``: a transformers image-text-to-text checkpoint (MedGemma, Lingshu,
  Qwen2.5-VL, LLaVA-style models) through ``AutoModelForImageTextToText`` / ``AutoProcessor``,
  loaded on first use, once per process (``LazyModel``), on CUDA when available (bfloat16
  there, float32 on the CPU). Greedy decoding; ``generate``'s own ``max_time`` bounds a call.
* ``openai:MODEL@URL``: any OpenAI-compatible chat-completions endpoint with vision (vLLM,
  Ollama, a llama.cpp server with a vision projector): the image goes as a base64 PNG data URL,
  with ``logprobs`` asked for (dropped once if the server refuses them). The API key, if any,
  is ``VisionConfig.vlm_api_key`` (``MEDLOOP_VLM_API_KEY``). Every request has a connect and a
  total time limit. This is how a 7-27B VLM runs beside the agent on its own GPU.

Why token probabilities: a VLM's words are evidence to be checked, not truth, and the
probability the model gave its own tokens is the one score both backends can give
(transformers' generation scores, OpenAI ``logprobs``). ``VlmReply`` keeps one log-probability
per generated token; the experts (``tools.vision.vlm``) turn them into ``Evidence.score``.

What the image is: the caller's ``uint8`` array, ``(H, W)`` grey or ``(H, W, 3)`` RGB, sent or
fed as it is (no metadata: the PNG carries no text chunks). De-identifying it (burned-in text)
is the caller's job (``tools.vision.vlm`` blacks out every text region before a VLM sees it).
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from tools.errors import ToolFailure
from tools.image import to_rgb
from tools.models.hf import from_pretrained
from tools.models.lazy import LazyModel
from tools.spec import ModelNeed, VisionConfig

__all__ = [
    "HfVlm",
    "OpenAIVlm",
    "Vlm",
    "VlmReply",
    "VlmSpec",
    "configured_vlm",
    "png_base64",
    "vlm_client",
]

DEFAULT_MAX_TIME_S = 55.0
"""The longest one reply may take (transformers ``max_time``; an endpoint's request limit): under
the agent's default tool time limit (``AgentContext.tool_timeout_s``, 60 s), so a slow model's
partial reply, or the endpoint's named timeout, reaches the planner instead of a bare
"timed out"."""

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for an endpoint to accept the connection: a dead server fails fast."""


@dataclass(frozen=True)
class VlmSpec:
    """A parsed ``MEDLOOP_VLM`` value.

    Attributes:
        backend: ``hf`` (a local transformers model) or ``openai`` (an endpoint).
        model: the hub id or folder (``hf``), or the model name the endpoint serves.
        url: the endpoint's base URL, e.g. ``http://127.0.0.1:8000/v1`` (``openai`` only).
    """

    backend: Literal["hf", "openai"]
    model: str
    url: str | None = None

    @classmethod
    def parse(cls, spec: str) -> VlmSpec:
        """``hf:ID_OR_PATH`` or ``openai:MODEL@URL``; ValueError naming the forms otherwise."""
        forms = "expected 'hf:ID_OR_PATH' or 'openai:MODEL@http(s)://HOST[:PORT]/v1'"
        kind, sep, rest = spec.strip().partition(":")
        if sep and rest and kind == "hf":
            return cls("hf", rest)
        if sep and rest and kind == "openai":
            model, at, url = rest.rpartition("@")
            if at and model and url.startswith(("http://", "https://")):
                return cls("openai", model, url.rstrip("/"))
        raise ValueError(f"bad VLM {spec!r}: {forms}")


@dataclass(frozen=True)
class VlmReply:
    """What a VLM said, with the probability it gave each token.

    Attributes:
        text: the generated text, special tokens removed, stripped.
        logprobs: natural-log probability of each generated token, in order; empty when the
            backend gave none (an endpoint without ``logprobs`` support).
        token_texts: each generated token as text (same length as ``logprobs``, or empty).
        tokens: how many tokens were generated (also known without ``logprobs``).
        model: the model's name as configured (``hf:...`` / ``openai:...@...``).
        finish_reason: ``stop`` (the model ended), ``length`` (``max_new_tokens`` reached),
            ``time`` (the time limit reached) or what the endpoint reported.
        elapsed_s: wall-clock seconds of the call.
    """

    text: str
    logprobs: tuple[float, ...] = ()
    token_texts: tuple[str, ...] = ()
    tokens: int = 0
    model: str = ""
    finish_reason: str | None = None
    elapsed_s: float = 0.0

    @property
    def mean_token_prob(self) -> float | None:
        """The geometric mean of the tokens' probabilities (per-token perplexity⁻¹), or None.

        Length-neutral: a long report is not penalised for being long, as a product would be.
        """
        if not self.logprobs:
            return None
        return _prob(sum(self.logprobs) / len(self.logprobs))

    @property
    def lead_token_prob(self) -> float | None:
        """The probability of the first token that holds a letter or digit, or None.

        For a yes/no answer that token is the answer ("Yes", "No"): its probability is how
        sure the model was of the answer itself, not of its wording afterwards.
        """
        for lp, tok in zip(self.logprobs, self.token_texts, strict=False):
            if any(ch.isalnum() for ch in tok):
                return _prob(lp)
        return _prob(self.logprobs[0]) if self.logprobs else None


def _prob(logprob: float) -> float:
    """``exp(logprob)`` clipped into [0, 1] (servers round; -inf means 0)."""
    if math.isnan(logprob):
        return 0.0
    return float(min(max(math.exp(min(logprob, 0.0)), 0.0), 1.0))


class Vlm(Protocol):
    """What the experts call: one image and one instruction, one reply."""

    @property
    def name(self) -> str:
        """The model as configured, e.g. ``hf:google/medgemma-4b-it``."""
        ...

    @property
    def remote(self) -> bool:
        """Whether the image leaves this process (an endpoint) or not (a local model)."""
        ...

    def generate(self, image: np.ndarray, prompt: str, *, system: str | None = None,
                 max_new_tokens: int = 128) -> VlmReply:
        """The model's reply to ``prompt`` about ``image`` (uint8 ``(H, W)`` or ``(H, W, 3)``)."""
        ...


def png_base64(image: np.ndarray) -> str:
    """``image`` (uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB) as base64 PNG, without metadata."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"a VLM image must be uint8 (H, W) or (H, W, 3), got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")  # no text chunks
    return base64.b64encode(buf.getvalue()).decode("ascii")


# =============================================================================================
# A local transformers model
# =============================================================================================
def _load_vlm(ref: str, device: str) -> tuple[Any, Any]:
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = from_pretrained(
        "VLM", ref, lambda r: AutoModelForImageTextToText.from_pretrained(r, dtype=dtype))
    processor = from_pretrained("VLM", ref, AutoProcessor.from_pretrained)
    if getattr(processor, "chat_template", None) is None:
        raise ToolFailure(f"VLM {ref!r} has no chat template: medloop needs an instruction-tuned "
                          "(chat) image-text-to-text checkpoint")
    return model.to(device).eval(), processor


def _messages(prompt: str, system: str | None, fold: bool) -> list[dict[str, Any]]:
    """Chat messages for a processor's template: one image, then the text.

    ``fold`` puts the system text at the top of the user turn, for templates without a system
    role.
    """
    text = f"{system}\n\n{prompt}" if (system and fold) else prompt
    out: list[dict[str, Any]] = []
    if system and not fold:
        out.append({"role": "system", "content": [{"type": "text", "text": system}]})
    out.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return out


class HfVlm(LazyModel[tuple[Any, Any]]):
    """A transformers image-text-to-text model, by hub id or folder, greedy decoding.

    Calls are serialised (one generation at a time on one model); ``max_time_s`` bounds each.
    """

    kind = "hf-vlm"
    remote = False

    def __init__(self, ref: str, device: str = "auto",
                 max_time_s: float = DEFAULT_MAX_TIME_S) -> None:
        super().__init__(ref, device)
        self.name = f"hf:{ref}"
        self.max_time_s = max_time_s
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        return _load_vlm(self.ref, self.device)

    def _prompt_text(self, processor: Any, prompt: str, system: str | None) -> str:
        try:
            return str(processor.apply_chat_template(_messages(prompt, system, fold=False),
                                                     add_generation_prompt=True, tokenize=False))
        except Exception:  # a template without a system role raises (jinja's raise_exception)
            if not system:
                raise
        return str(processor.apply_chat_template(_messages(prompt, system, fold=True),
                                                 add_generation_prompt=True, tokenize=False))

    def generate(self, image: np.ndarray, prompt: str, *, system: str | None = None,
                 max_new_tokens: int = 128) -> VlmReply:
        """Greedy reply to ``prompt`` about ``image``, with each token's log-probability."""
        import torch
        from PIL import Image

        model, processor = self.model()
        t0 = time.perf_counter()
        text = self._prompt_text(processor, prompt, system)
        pil = Image.fromarray(to_rgb(image))
        inputs = processor(images=[pil], text=[text], return_tensors="pt")
        inputs = inputs.to(self.device, dtype=model.dtype)  # casts floating tensors only
        prompt_len = int(inputs["input_ids"].shape[1])
        with self._lock, torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True,
                                 max_time=self.max_time_s)
            scores = model.compute_transition_scores(out.sequences, out.scores,
                                                     normalize_logits=True)
        ids = out.sequences[0, prompt_len:].tolist()
        logprobs = [float(v) for v in scores[0].float().cpu().tolist()][:len(ids)]
        tokenizer = getattr(processor, "tokenizer", processor)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        pad = getattr(tokenizer, "pad_token_id", None)
        kept = [(i, lp) for i, lp in zip(ids, logprobs, strict=False) if i != pad]
        elapsed = time.perf_counter() - t0
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if elapsed >= self.max_time_s:
            finish = "time"
        elif kept and kept[-1][0] in eos_ids:
            finish = "stop"
        else:
            finish = "length" if len(kept) >= max_new_tokens else "stop"
        answer = tokenizer.decode([i for i, _ in kept if i not in special],
                                  skip_special_tokens=True)
        return VlmReply(
            text=str(answer).strip(),
            logprobs=tuple(lp for _, lp in kept),
            token_texts=tuple(str(tokenizer.decode([i])) for i, _ in kept),
            tokens=len(kept), model=self.name, finish_reason=finish, elapsed_s=elapsed,
        )


# =============================================================================================
# An OpenAI-compatible endpoint
# =============================================================================================
@dataclass
class OpenAIVlm:
    """A vision chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Attributes:
        model: the model name the server serves.
        url: its base URL (``.../v1``).
        api_key: sent as a bearer token when set (local servers need none).
        timeout_s: the total time limit of one request (connecting: ``CONNECT_TIMEOUT_S``).
    """

    model: str
    url: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_MAX_TIME_S
    remote = True
    _logprobs: bool = field(default=True, init=False, repr=False)

    @property
    def name(self) -> str:
        """``openai:MODEL@URL``, as configured."""
        return f"openai:{self.model}@{self.url}"

    def _body(self, b64: str, prompt: str, system: str | None, max_new_tokens: int
              ) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
            {"type": "text", "text": prompt},
        ]})
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_new_tokens, "temperature": 0.0}
        if self._logprobs:
            body["logprobs"] = True
        return body

    def _post(self, body: dict[str, Any]) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        where = f"the VLM endpoint {self.url}"
        try:
            return httpx.post(f"{self.url}/chat/completions", json=body, headers=headers,
                              timeout=timeout)
        except httpx.TimeoutException as exc:
            raise ToolFailure(f"{where} did not answer within {self.timeout_s:g} s "
                              f"({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ToolFailure(f"{where} could not be reached ({type(exc).__name__}: {exc}); "
                              "is the server running? (MEDLOOP_VLM=openai:MODEL@URL)") from exc

    def generate(self, image: np.ndarray, prompt: str, *, system: str | None = None,
                 max_new_tokens: int = 128) -> VlmReply:
        """The endpoint's reply about ``image`` (sent as a PNG), with logprobs when it has them."""
        b64 = png_base64(image)
        t0 = time.perf_counter()
        resp = self._post(self._body(b64, prompt, system, max_new_tokens))
        if resp.status_code in (400, 422) and self._logprobs:
            # Some servers reject ``logprobs``; ask once more without, and stop asking.
            self._logprobs = False
            resp = self._post(self._body(b64, prompt, system, max_new_tokens))
        if resp.status_code >= 400:
            raise ToolFailure(f"the VLM endpoint {self.url} answered HTTP {resp.status_code}: "
                              f"{_error_message(resp)}")
        try:
            choice = resp.json()["choices"][0]
            text = _content_text(choice["message"].get("content"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ToolFailure(f"the VLM endpoint {self.url} sent a reply that is not a chat "
                              f"completion ({type(exc).__name__})") from exc
        logprobs, token_texts = _logprobs_of(choice)
        usage = resp.json().get("usage") or {}
        tokens = len(logprobs) or int(usage.get("completion_tokens") or 0)
        return VlmReply(text=text.strip(), logprobs=logprobs, token_texts=token_texts,
                        tokens=tokens, model=self.name, finish_reason=choice.get("finish_reason"),
                        elapsed_s=time.perf_counter() - t0)


def _error_message(resp: Any) -> str:
    """The server's own error message, in one line, else the start of its body."""
    try:
        err = resp.json().get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = None
    text = str(msg or resp.text or "").strip()
    return (text.splitlines()[0] if text else "(no message)")[:300]


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise TypeError("content is neither text nor a list of parts")


def _logprobs_of(choice: dict[str, Any]) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Each generated token's logprob and text from an OpenAI ``choice`` (empty when absent)."""
    entries: Sequence[Any] = ((choice.get("logprobs") or {}).get("content") or [])
    lps: list[float] = []
    texts: list[str] = []
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("logprob"), int | float):
            lps.append(float(e["logprob"]))
            texts.append(str(e.get("token", "")))
    return tuple(lps), tuple(texts)


# =============================================================================================
# Configuration
# =============================================================================================
def configured_vlm(config: VisionConfig) -> ModelNeed | None:
    """The VLM ``config.vlm`` names, described for ``medloop models``, or None."""
    if not config.vlm:
        return None
    spec = VlmSpec.parse(config.vlm)
    if spec.backend == "hf":
        return ModelNeed("hf-vlm", "ask_image, draft_report (vision-language model)",
                         ref=spec.model, device="gpu", cache_key=f"hf-vlm:{spec.model}",
                         note="transformers AutoModelForImageTextToText")
    return ModelNeed("openai-vlm", "ask_image, draft_report (vision-language model)",
                     ref=f"{spec.model}@{spec.url}",
                     note="served by an OpenAI-compatible endpoint (not loaded here)")


def vlm_client(config: VisionConfig, timeout_s: float = DEFAULT_MAX_TIME_S) -> Vlm:
    """The client for ``config.vlm`` (nothing loaded or contacted yet).

    Raises:
        ToolFailure: no VLM is configured.
    """
    if not config.vlm:
        raise ToolFailure("no vision-language model is configured (set MEDLOOP_VLM to "
                          "hf:ID_OR_PATH or openai:MODEL@URL)")
    spec = VlmSpec.parse(config.vlm)
    if spec.backend == "hf":
        return HfVlm(spec.model, config.device, max_time_s=timeout_s)
    return OpenAIVlm(spec.model, str(spec.url), api_key=config.vlm_api_key, timeout_s=timeout_s)
