"""Burned-in text: read it with the packaged OCR model, flag likely identifiers, black it out.

Why: de-identifying the DICOM header (``tools.ingest.deid``) leaves the pixels alone, and
ultrasound, secondary captures and scanned films often carry the patient's name, id and
dates burned into the image. Text in the image is also useful evidence in its own right (side
markers, "PWR", a scanner's annotation).

The OCR model is RapidOCR (PP-OCRv4 detection + recognition, ONNX, ~15 MB, shipped inside the
``rapidocr-onnxruntime`` package, so nothing is downloaded). It is loaded on first use, once per
process, behind a lock; calls are serialised through the same engine.

Pure functions: ``find_text`` (image -> ``TextRegion`` list), ``identifier_kind`` (text ->
a kind of possible identifier, or None) and ``redact`` (image + regions -> image with the boxes
blacked out). ``TOOLS`` declares ``find_text`` as the ``read_text`` tool.

Privacy: what OCR reads may itself be PHI. The evidence summary (which the planner reads and,
with a remote LLM, leaves the machine) never quotes text classified as a possible identifier;
it says ``[redacted: name-like]`` instead, and such boxes keep an empty label. The heuristic is
deliberately simple and errs on the side of hiding (a scanner's "8M12L" counts as id-like); it
does *not* catch an all-capitals name without a caret or comma ("SMITH JOHN" reads like
"LYMPH NODE"), so ``redact`` every region, not only the flagged ones, before sharing an image.

Coordinates: boxes are ``(x0, y0, x1, y1)`` pixels of the given image (XYXY, x right, y down,
x1/y1 exclusive), the axis-aligned bounds of the OCR's quadrilateral.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool

from tools.base import ImageArgs
from tools.domain import Domain
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import PIXELS, Box, Evidence
from tools.packaged import RAPIDOCR
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore

__all__ = [
    "TOOLS",
    "TextRegion",
    "burned_in_tools",
    "find_text",
    "identifier_kind",
    "redact",
    "text_evidence",
]

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()

# How many regions the summary quotes before "and N more": the planner needs the gist, and
# the evidence keeps every box.
_MAX_QUOTED = 8

_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|SEPT|OCT|NOV|DEC"
_DATE = re.compile(
    r"\b\d{1,4}[/.\-](?:0?[1-9]|[12]\d|3[01])[/.\-]\d{2,4}\b"  # 12/03/2019, 2019-03-12
    r"|\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"  # 20190312 (DICOM DA)
    rf"|\b\d{{1,2}}[\s\-]?(?:{_MONTHS})[A-Z]*[\s\-,]*\d{{2,4}}\b"  # 12 MAR 2019, 12-Mar-19
    rf"|\b(?:{_MONTHS})[A-Z]*[\s\-]?\d{{1,2}},?[\s\-]\d{{2,4}}\b",  # MAR 12, 2019
    re.IGNORECASE,
)
_NAME = re.compile(
    r"[A-Za-z][A-Za-z'\-]*\^[A-Za-z]"  # DICOM PN: SMITH^JOHN
    r"|\b[A-Z][A-Za-z'\-]+,\s*[A-Z][A-Za-z'\-]+"  # SMITH, JOHN / Smith, John
    r"|\b[A-Z][a-z'\-]+\s+(?:[A-Z]\.?\s+)?[A-Z][a-z'\-]+\b"  # John Smith, John Q. Smith
    r"|\b(?i:DR|MR|MRS|MS|MISS|PROF)\.?\s+[A-Z][A-Za-z]+",  # Dr Smith, MR SMITH
)
# A token of letters/digits/dashes with at least two digits and five characters: record and
# accession numbers ("MRN8675309", "630P630", "123-45-6789"). Pure numbers of 6+ digits too.
_ID = re.compile(r"\b(?=[A-Za-z0-9\-]*\d[A-Za-z0-9\-]*\d)[A-Za-z0-9\-]{5,}\b|\b\d{6,}\b")
# Institution names: not a HIPAA identifier on their own, but the Basic Profile replaces them,
# and with a date they narrow a patient down a lot.
_INSTITUTION = re.compile(
    # long words match inside run-together OCR output ("ABCHOSPITAL"); short ones need a word
    r"HOSPITAL|CLINIC|MEDICAL|CENTER|CENTRE|UNIVERSITY|INFIRMARY|HEALTH|IMAGING"
    r"|\b(?:HOSP|CTR|MED)\b",
    re.IGNORECASE,
)
# Field labels that announce an identifier even when the value is cut off or misread.
_LABEL = re.compile(
    r"\b(?:NAME|PATIENT|PAT|PT|DOB|BIRTH|MRN|ACC|ACCESSION|SSN|ID)\b\s*[:#.]?", re.IGNORECASE
)


@dataclass(frozen=True)
class TextRegion:
    """One line of text the OCR read.

    Attributes:
        text: the text as read (may be PHI: do not log or send it without checking
            ``identifier_kind``).
        box: ``(x0, y0, x1, y1)`` integer pixels, XYXY, x1/y1 exclusive, clipped to the image.
        score: the recogniser's confidence in [0, 1].
    """

    text: str
    box: tuple[int, int, int, int]
    score: float


# =============================================================================================
# Pure functions
# =============================================================================================
def find_text(display: np.ndarray) -> list[TextRegion]:
    """Read every line of text in a ``uint8`` image, ``(H, W)`` grey or ``(H, W, 3)`` RGB.

    Returns regions in the OCR's reading order (top to bottom, left to right); an empty list
    when there is no text. About 0.5 s for a 640x480 frame on 2 CPU cores.

    Raises:
        ToolInputError: the array is not a 2D grey or RGB ``uint8`` image.
        ToolFailure: the OCR package is not installed or failed.
    """
    img = np.asarray(display)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ToolInputError(
            f"find_text needs a uint8 (H, W) or (H, W, 3) image, got {img.dtype} {img.shape}"
        )
    height, width = img.shape[:2]
    # RapidOCR takes 3-channel arrays as BGR (OpenCV's order).
    bgr = np.ascontiguousarray(img[..., ::-1]) if img.ndim == 3 else img
    engine = _engine()
    try:
        with _ENGINE_LOCK:
            result, _ = engine(bgr)
    except Exception as exc:  # onnxruntime / OpenCV raise many types
        raise ToolFailure(f"OCR failed ({type(exc).__name__}: {exc})") from exc
    regions: list[TextRegion] = []
    for quad, text, score in result or []:
        xs = [float(p[0]) for p in quad]
        ys = [float(p[1]) for p in quad]
        x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
        x1, y1 = min(width, math.ceil(max(xs)) + 1), min(height, math.ceil(max(ys)) + 1)
        if x1 > x0 and y1 > y0 and str(text).strip():
            regions.append(TextRegion(str(text).strip(), (x0, y0, x1, y1), float(score)))
    return regions


def identifier_kind(text: str) -> str | None:
    """Classify OCR'd text as a possible identifier, or None when it looks like none.

    Kinds: "date-like", "name-like", "labelled" (a field label such as "DOB:" or "MRN"),
    "institution-like" (hospital, clinic, centre...), "id-like" (letters and digits, or a long
    number).

    A heuristic that prefers false alarms to misses; see the module docstring for what it
    cannot catch.
    """
    if _DATE.search(text):
        return "date-like"
    if _NAME.search(text):
        return "name-like"
    if _LABEL.search(text):
        return "labelled"
    if _INSTITUTION.search(text):
        return "institution-like"
    if _ID.search(text):
        return "id-like"
    return None


def redact(display: np.ndarray, regions: Sequence[TextRegion], pad: int = 2) -> np.ndarray:
    """A copy of ``display`` with every region's box, grown by ``pad`` pixels, set to 0 (black).

    Works on grey ``(H, W)`` and colour ``(H, W, C)`` arrays of any dtype; boxes are clipped
    to the image. The input is not modified.
    """
    out = np.array(display, copy=True)
    height, width = out.shape[:2]
    for r in regions:
        x0, y0, x1, y1 = r.box
        out[max(0, y0 - pad) : min(height, y1 + pad), max(0, x0 - pad) : min(width, x1 + pad)] = 0
    return out


# =============================================================================================
# Tool wrapper
# =============================================================================================
_READ_TEXT = (
    "Read text burned into an image (annotations, markers, labels) with OCR. Returns each text "
    "line with its pixel box [x0, y0, x1, y1]; text that looks like a patient identifier "
    "(name, date, id number) is reported only as '[redacted: ...]'."
)


def _read_text(deps: ToolDeps) -> Callable[[ImageArgs], Evidence]:
    def read_text(args: ImageArgs) -> Evidence:
        img = deps.store.get(args.image_id)
        regions = find_text(img.display)
        frames = int(img.pixels.shape[0]) if img.pixels.ndim > img.display.ndim else 1
        return text_evidence(regions, args.image_id, frames)

    return read_text


TOOLS = (
    ToolSpec(
        name="read_text", description=_READ_TEXT, args=ImageArgs, build=_read_text,
        models=(RAPIDOCR,),
        examples=("What text is written on the image?",
                  "Which markers or labels are burned into the film?",
                  "Is there an annotation on this image?"),
        domain=Domain(validated_on="any image with printed text (RapidOCR reads any picture)",
                      why="OCR of burned-in text means the same on every modality"),
    ),
)
"""``read_text``: OCR of the displayed frame."""


def burned_in_tools(store: ImageStore) -> list[BaseTool]:
    """``read_text`` over images in ``store`` (OCR of the displayed frame)."""
    return [spec.tool(ToolDeps(store)) for spec in TOOLS]


def text_evidence(regions: Sequence[TextRegion], image_id: str, frames: int = 1) -> Evidence:
    """Evidence for ``read_text``: quotes only text that does not look like an identifier.

    ``score`` is the mean OCR confidence (None when no text was found: there is nothing to be
    confident about). ``data`` holds counts only, never the text.
    """
    kinds = [identifier_kind(r.text) for r in regions]
    quoted = [f"'{r.text}'" if k is None else f"[redacted: {k}]"
              for r, k in zip(regions, kinds, strict=True)]
    n_phi = sum(k is not None for k in kinds)
    if not regions:
        summary = "no text found"
    else:
        summary = f"{len(regions)} text region{'s' if len(regions) != 1 else ''}"
        if n_phi:
            summary += f", {n_phi} possible identifier{'s' if n_phi != 1 else ''}"
        summary += ": " + ", ".join(quoted[:_MAX_QUOTED])
        if len(quoted) > _MAX_QUOTED:
            summary += f", and {len(quoted) - _MAX_QUOTED} more"
    if frames > 1:
        summary += f"; read on frame {frames // 2 + 1} of {frames} only"
    boxes = [
        Box(xyxy=(float(r.box[0]), float(r.box[1]), float(r.box[2]), float(r.box[3])),
            label=r.text if k is None else "", score=min(1.0, max(0.0, r.score)))
        for r, k in zip(regions, kinds, strict=True)
    ]
    by_kind: dict[str, int] = {}
    for k in kinds:
        if k is not None:
            by_kind[k] = by_kind.get(k, 0) + 1
    return Evidence(
        tool="read_text",
        image_id=image_id,
        summary=summary + ".",
        score=round(float(np.mean([r.score for r in regions])), 4) if regions else None,
        boxes=boxes,
        data={"observes": PIXELS, "regions": len(regions), "possible_identifiers": n_phi,
              "identifier_kinds": by_kind},
    )


def _engine() -> Any:
    """The process's RapidOCR engine, created on first use (~0.3 s, ~15 MB of ONNX weights)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise ToolFailure(
                    "OCR is not installed: pip install rapidocr-onnxruntime==1.4.4"
                ) from exc
            _ENGINE = RapidOCR()
        return _ENGINE
