"""A vision-language model as an expert: ``ask_image`` and ``draft_report``.

``ask_image`` puts one focused visual question to the configured VLM about a stored image or a
region of it ("Is the left costophrenic angle blunted?"); ``draft_report`` asks it for a
radiology-style report (findings and impression). Both are offered only when a VLM is configured
(``MEDLOOP_VLM``, ``VisionConfig.vlm``; ``tools.models.vlm`` runs it).

Why its words are evidence, not truth: a VLM writes fluent text whether or not it saw what it
writes. Each reply becomes one ``Evidence`` item whose summary says it is unverified model text,
whose ``score`` is the probability the model gave its own tokens (for a yes/no answer, that of
the yes/no token; otherwise the geometric mean over the reply's tokens), and whose yes/no answer
about a named ``finding`` is an ``Assertion`` the agent's meaning check holds other tools'
assertions against. Without token probabilities (an endpoint that gives none) the score is
None: nothing is made up.

What the model sees: only the stored image's pixels, which ingest already separated from the
DICOM header (the store keeps de-identified metadata only), with every region of burned-in text
the packaged OCR finds blacked out first (``tools.ingest.burned_in``), whatever the backend:
a local model could read a name off the pixels and write it into its answer, which then reaches
the planner. If the OCR cannot run, the call fails and nothing is sent. The image goes as a PNG
without metadata; nothing of the header is sent.

Coordinates: ``box`` is ``[x0, y0, x1, y1]`` pixels of the stored image's display (XYXY, x
right, y down); the model sees that region with a margin of ``REGION_MARGIN`` of its size on
each side, clipped to the image.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from pydantic import Field

from tools.base import ImageArgs
from tools.domain import Domain
from tools.errors import ToolInputError
from tools.evidence import Assertion, Box, Evidence
from tools.ingest.burned_in import find_text, redact
from tools.models.vlm import Vlm, VlmReply, configured_vlm, vlm_client
from tools.spec import ModelNeed, ToolDeps, ToolSpec, VisionConfig
from tools.store import ImageStore

__all__ = [
    "MAX_SIDE",
    "REGION_MARGIN",
    "TOOLS",
    "AskImageArgs",
    "DraftReportArgs",
    "SharedImages",
    "answer_evidence",
    "crop_region",
    "report_evidence",
    "shared_images",
    "split_report",
]

MAX_SIDE = 1024
"""Longest side, in pixels, of the image a VLM is given (larger ones are shrunk, aspect kept):
every VLM processor resizes far below this, and an endpoint need not receive megabytes."""

REGION_MARGIN = 0.15
"""Context kept around a ``box``, as a share of its width and height on each side."""

ASK_SYSTEM = (
    "You are assisting a radiologist. Answer the question about the medical image briefly. "
    "If it is a yes/no question, start your answer with 'Yes' or 'No', then give one sentence "
    "on what in the image supports it. If the image cannot answer it, say so."
)
REPORT_SYSTEM = (
    "You are assisting a radiologist. Write a concise radiology report of this image with two "
    "sections, 'Findings:' and 'Impression:'. Describe only what is visible; do not invent "
    "patient details, dates, prior studies or measurements."
)
ASK_TOKENS = 96
REPORT_TOKENS = 320
_SUMMARY_CHARS = 500  # the share of a reply the planner reads; the whole is in ``data``


# =============================================================================================
# What the model is shown
# =============================================================================================
class SharedImages:
    """Stored images as a VLM may see them: every burned-in text region blacked out.

    OCR costs about half a second per frame, so the redacted display is kept per image id
    (least recently used out) for the next question on the same image.
    """

    def __init__(self, store: ImageStore, size: int = 16) -> None:
        self.store = store
        self.size = size
        self._cache: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_id: str) -> tuple[np.ndarray, int]:
        """The redacted display (uint8 ``(H, W)`` or ``(H, W, 3)``) and how many regions went."""
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        display = np.asarray(self.store.get(image_id).display)
        if display.ndim == 3 and display.shape[2] == 4:
            display = display[..., :3]
        display = np.ascontiguousarray(display.astype(np.uint8, copy=False))
        regions = find_text(display)
        shown = redact(display, regions) if regions else display
        with self._lock:
            self._cache[image_id] = (shown, len(regions))
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return shown, len(regions)


_SHARED: weakref.WeakKeyDictionary[ImageStore, SharedImages] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared_images(store: ImageStore) -> SharedImages:
    """The one ``SharedImages`` of ``store``: both tools reuse one OCR pass per image."""
    with _SHARED_LOCK:
        if store not in _SHARED:
            _SHARED[store] = SharedImages(store)
        return _SHARED[store]


def crop_region(image: np.ndarray, box: tuple[float, float, float, float] | None
                ) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """``image`` cut to ``box`` plus ``REGION_MARGIN``, and the pixel box cut (XYXY).

    Raises:
        ToolInputError: the box is inverted, empty or outside the image.
    """
    if box is None:
        return image, None
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ToolInputError(f"box {list(box)} is empty or inverted: give [x0, y0, x1, y1] "
                             "with x1 > x0 and y1 > y0")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ToolInputError(f"box {list(box)} lies outside the image ({w}x{h} pixels)")
    mx, my = (x1 - x0) * REGION_MARGIN, (y1 - y0) * REGION_MARGIN
    cx0, cy0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
    cx1, cy1 = min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))
    cx1, cy1 = max(cx1, min(w, cx0 + 8)), max(cy1, min(h, cy0 + 8))  # at least 8x8 where it fits
    return image[cy0:cy1, cx0:cx1], (cx0, cy0, cx1, cy1)


def _fit(image: np.ndarray) -> np.ndarray:
    """``image`` shrunk so its longest side is at most ``MAX_SIDE`` (area interpolation)."""
    h, w = image.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return image
    import cv2

    scale = MAX_SIDE / max(h, w)
    return np.asarray(cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                 interpolation=cv2.INTER_AREA))


# =============================================================================================
# Evidence
# =============================================================================================
_YES = re.compile(r"^\W*(yes|yeah|present|positive)\b", re.I)
_NO = re.compile(r"^\W*(no|not|absent|negative|none)\b", re.I)


def _polarity(text: str) -> bool | None:
    """True for an answer that opens with yes, False with no, None otherwise."""
    if _YES.match(text):
        return True
    if _NO.match(text):
        return False
    return None


def _clip(text: str, limit: int = _SUMMARY_CHARS) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[:limit - 1].rstrip() + "…"


def _reply_data(reply: VlmReply, redacted: int) -> dict[str, object]:
    return {"model": reply.model, "tokens": reply.tokens, "finish_reason": reply.finish_reason,
            "mean_token_prob": reply.mean_token_prob, "lead_token_prob": reply.lead_token_prob,
            "text_regions_redacted": redacted}


def _caveats(reply: VlmReply) -> str:
    notes = []
    if reply.finish_reason in ("length", "time"):
        notes.append("cut short by the "
                     + ("token limit" if reply.finish_reason == "length" else "time limit"))
    if reply.mean_token_prob is None:
        notes.append("no token probabilities from this model, so no score")
    return f" ({'; '.join(notes)})" if notes else ""


def answer_evidence(reply: VlmReply, image_id: str, question: str, *,
                    region: tuple[int, int, int, int] | None = None,
                    finding: str | None = None, redacted: int = 0) -> Evidence:
    """``ask_image``'s evidence: the answer quoted as unverified model text, with its score.

    The score is the yes/no token's probability for an answer opening with yes or no, else the
    mean token probability; a yes/no answer about ``finding`` is also an assertion about it
    (probability of presence: the score for yes, one minus it for no).
    """
    polarity = _polarity(reply.text)
    score = reply.lead_token_prob if polarity is not None else reply.mean_token_prob
    where = f" about the region {list(region)}" if region else ""
    if not reply.text:
        summary = (f"The vision-language model {reply.model} gave no answer to {question!r}"
                   f"{where}{_caveats(reply)}.")
    else:
        prob = f"; token probability {score:.2f}" if score is not None else ""
        summary = (f"The vision-language model {reply.model} answered {question!r}{where}: "
                   f"\"{_clip(reply.text)}\" (unverified model text: check it against "
                   f"measurements and other tools{prob}){_caveats(reply)}.")
    assertions = []
    if finding and finding.strip() and polarity is not None:
        p = None if score is None else (score if polarity else 1.0 - score)
        assertions.append(Assertion(finding=finding.strip(), present=polarity, probability=p))
    boxes = [] if region is None else [
        Box(xyxy=(float(region[0]), float(region[1]), float(region[2]), float(region[3])),
            label="region asked about")]
    return Evidence(
        tool="ask_image", image_id=image_id, summary=summary, score=score, boxes=boxes,
        assertions=assertions, elapsed_s=reply.elapsed_s,
        data={"answer": reply.text, "question": question, "region": list(region) if region
              else None, **_reply_data(reply, redacted)},
    )


# "Findings:", "**Impression:**", "## FINDINGS:": a section's name and its colon, anywhere.
_SECTION = re.compile(r"[*#]*\b(findings|impression)\b\**\s*:\s*\**", re.I)


def split_report(text: str) -> dict[str, str]:
    """The ``findings`` and ``impression`` sections of a report ("" for one that is missing)."""
    parts: dict[str, str] = {"findings": "", "impression": ""}
    marks = list(_SECTION.finditer(text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        key = m.group(1).lower()
        if not parts[key]:
            parts[key] = text[m.end():end].strip().strip("*").strip()
    return parts


def report_evidence(reply: VlmReply, image_id: str, redacted: int = 0) -> Evidence:
    """``draft_report``'s evidence: the draft quoted as unverified, scored by mean token prob."""
    sections = split_report(reply.text)
    score = reply.mean_token_prob
    prob = f"; mean token probability {score:.2f}" if score is not None else ""
    if not reply.text:
        summary = f"The vision-language model {reply.model} wrote no report{_caveats(reply)}."
    else:
        body = (f"Findings: {sections['findings']} Impression: {sections['impression']}"
                if sections["findings"] or sections["impression"] else reply.text)
        summary = (f"Draft report by the vision-language model {reply.model} (unverified model "
                   f"text: confirm each finding with other tools before stating it{prob})"
                   f"{_caveats(reply)}: \"{_clip(body)}\"")
    return Evidence(tool="draft_report", image_id=image_id, summary=summary, score=score,
                    elapsed_s=reply.elapsed_s,
                    data={"report": reply.text, **sections, **_reply_data(reply, redacted)})


# =============================================================================================
# The tools
# =============================================================================================
class AskImageArgs(ImageArgs):
    """Arguments of ``ask_image``."""

    question: str = Field(min_length=3, max_length=500,
                          description="one focused visual question about the image, e.g. "
                                      "'Is the left costophrenic angle blunted?'")
    box: tuple[float, float, float, float] | None = Field(
        default=None, description="optional region to look at: [x0, y0, x1, y1] in pixels "
                                  "(e.g. a box from find)")
    finding: str | None = Field(default=None, max_length=80,
                                description="optional: the finding the question is about, e.g. "
                                            "'pleural effusion'")


class DraftReportArgs(ImageArgs):
    """Arguments of ``draft_report``."""

    indication: str | None = Field(default=None, max_length=300,
                                   description="optional clinical context, e.g. 'cough, fever'")


@lru_cache(maxsize=8)
def _client(config: VisionConfig) -> Vlm:
    """One client per configuration, shared by both tools (one lock, one endpoint memo)."""
    return vlm_client(config)


def _asker(deps: ToolDeps, shared: SharedImages) -> Callable[[AskImageArgs], Evidence]:
    def ask_image(args: AskImageArgs) -> Evidence:
        t0 = time.perf_counter()
        display, redacted = shared.get(args.image_id)
        view, region = crop_region(display, args.box)
        prompt = args.question.strip()
        if region is not None:
            prompt = f"This is a crop of the region in question. {prompt}"
        reply = _client(deps.vision).generate(_fit(view), prompt, system=ASK_SYSTEM,
                                              max_new_tokens=ASK_TOKENS)
        ev = answer_evidence(reply, args.image_id, args.question.strip(), region=region,
                             finding=args.finding, redacted=redacted)
        ev.elapsed_s = time.perf_counter() - t0
        return ev

    return ask_image


def _reporter(deps: ToolDeps, shared: SharedImages) -> Callable[[DraftReportArgs], Evidence]:
    def draft_report(args: DraftReportArgs) -> Evidence:
        t0 = time.perf_counter()
        display, redacted = shared.get(args.image_id)
        prompt = "Write the report."
        if args.indication and args.indication.strip():
            prompt = f"Indication: {args.indication.strip()}\n{prompt}"
        reply = _client(deps.vision).generate(_fit(display), prompt, system=REPORT_SYSTEM,
                                              max_new_tokens=REPORT_TOKENS)
        ev = report_evidence(reply, args.image_id, redacted)
        ev.elapsed_s = time.perf_counter() - t0
        return ev

    return draft_report


def _vlm_needs(config: VisionConfig) -> tuple[ModelNeed, ...]:
    need = configured_vlm(config)
    return (need,) if need is not None else ()


def _has_vlm(deps: ToolDeps) -> bool:
    return deps.vision.vlm is not None


_DOMAIN = Domain(
    validated_on="what the configured vision-language model was trained on",
    why="medloop cannot know a user's VLM's domain; its answers are marked unverified and "
        "scored by the model's own token probabilities instead")

_ASK = (
    "Ask the vision-language model one focused visual question about an image, or about a "
    "region of it given as a box (e.g. 'Is the left costophrenic angle blunted?'). Its answer "
    "is unverified model text with a token-probability score: check it with other tools."
)
_REPORT = (
    "Ask the vision-language model to draft a radiology report (findings and impression) of "
    "an image. The draft is unverified model text: confirm each finding with other tools "
    "before stating it."
)

TOOLS = (
    ToolSpec(
        name="ask_image", description=_ASK, args=AskImageArgs,
        build=lambda deps: _asker(deps, shared_images(deps.store)),
        models=_vlm_needs, enabled=_has_vlm, variant="vlm", domain=_DOMAIN,
        examples=("Is the left costophrenic angle blunted?",
                  "Does the heart look enlarged on this film?",
                  "Is there free air under the diaphragm?",
                  "What is the structure inside this box?"),
    ),
    ToolSpec(
        name="draft_report", description=_REPORT, args=DraftReportArgs,
        build=lambda deps: _reporter(deps, shared_images(deps.store)),
        models=_vlm_needs, enabled=_has_vlm, variant="vlm", domain=_DOMAIN,
        examples=("Write a report for this chest X-ray.",
                  "Draft the findings and impression for this scan.",
                  "Give me a radiology report of this image."),
    ),
)
"""``ask_image`` and ``draft_report``: offered only when ``MEDLOOP_VLM`` names a model."""
