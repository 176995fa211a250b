"""Where a tool is valid: the kinds of image it was validated on, and what it does elsewhere.

Each ``ToolSpec`` declares a ``Domain`` (``tools.spec``): the modalities (DICOM codes: CT, MR,
CR, DX...), body parts and projections (``ViewPosition``: PA, AP...) it was validated on, whether
only medloop's own synthetic images (``source_format`` ``"phantom"`` / ``"synthetic"``) are
inside or, for an expert fitted on real cases, only clinical ones, and a line saying what it
was validated on. The tool wrapper (``ToolSpec.bind``) judges the image a call names against
it *before* the tool runs:

* **inside** — the tool runs as usual;
* **outside** (the metadata says so: a CT for a chest-radiograph tool, any clinical image for a
  phantom-validated detector, a phantom for a library of real cases) — per the declaration,
  the call is refused with an ``OutsideDomain`` error naming why (the planner picks another
  tool), or the tool runs and its evidence is *flagged*;
* **unknown** (a JPEG without DICOM metadata: modality, body part or view missing) — the
  declaration says explicitly whether the tool runs, runs flagged, or is refused.

A declaration can also say its images are grey-scale (``grey_only``: CT, MR and radiographs
are): the pixels then settle what a JPEG's missing metadata cannot, and a colour photograph or
a stained slide is outside (``colour_share``).

Flagged evidence carries ``data["out_of_domain"] = True`` and ``data["domain_note"]`` (one line:
why), its ``score`` drops to at most ``FLAGGED_SCORE_FACTOR`` of what it was, its summary starts
"Outside what this tool was validated for (...)", and the meaning check
(``agent.trust.agreement``) does not hold an answer to its assertions. A tool whose *output* is
implausible for its domain (76 "lesions" where its validation images have 0-3) flags its own
evidence with ``flag_evidence``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from tools.errors import OutsideDomain
from tools.evidence import Evidence
from tools.image import ImageRef, LoadedImage, colour_share

__all__ = [
    "ANY_IMAGE",
    "CHEST_PARTS",
    "COLOUR_SHARE",
    "FLAGGED_SCORE_FACTOR",
    "RADIOGRAPH_MODALITIES",
    "SYNTHETIC_FORMATS",
    "Domain",
    "ImageFacts",
    "Verdict",
    "colour_share",
    "flag_evidence",
]

SYNTHETIC_FORMATS = frozenset({"phantom", "synthetic"})
"""``source_format`` values of images medloop made itself: phantoms and test images."""

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "XR"})
"""DICOM modality codes of projection radiographs (CR computed, DX digital; RG / DR / XR as some
vendors and de-identified exports write them)."""

CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_PA", "TORSO"})
"""``BodyPartExamined`` values (upper case, spaces as ``_``) that show both lungs."""

FLAGGED_SCORE_FACTOR = 0.25
"""A flagged evidence item's score is at most this share of the tool's own (and this when the
tool gave none): outside its validated domain, a tool's self-assessment is not evidence of its
accuracy."""

COLOUR_SHARE = 0.02
"""An image with more than this share of coloured pixels is a colour image. The 111 VQA-RAD
dev images (CT, MR, X-ray saved as RGB JPEGs) have at most 0.5 % (their coloured arrows); the
colour pictures scikit-image ships have 3-86 % (``bench/library_domain.py``)."""


_UNKNOWN = frozenset({"", "UNKNOWN", "NONE", "OT"})  # OT: DICOM's "other"

Policy = Literal["refuse", "flag"]
UnknownPolicy = Literal["run", "flag", "refuse"]


def _code(value: Any) -> str | None:
    """Upper-case, ``_``-joined metadata value; None when missing or a placeholder."""
    text = "_".join(str(value or "").upper().split())
    return None if text in _UNKNOWN else text


@dataclass(frozen=True)
class ImageFacts:
    """What the metadata says about an image's kind; None where it says nothing.

    ``modality`` is a DICOM code (``CT``, ``MR``, ``DX``...), ``body_part`` a
    ``BodyPartExamined`` value and ``view`` a ``ViewPosition`` (``PA``, ``AP``, ``LL``...), all
    upper case. ``synthetic`` is true for images medloop made (phantoms, test images), whose
    metadata describes what they imitate. ``colour`` is the share of coloured pixels
    (``colour_share``), None when the pixels were not seen (a state reference).
    """

    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    synthetic: bool = False
    source_format: str = "unknown"
    colour: float | None = None

    @classmethod
    def of_meta(cls, meta: dict[str, Any], source_format: str) -> ImageFacts:
        """Facts from de-identified metadata (``LoadedImage.meta``) and the source format."""
        return cls(modality=_code(meta.get("modality")), body_part=_code(meta.get("body_part")),
                   view=_code(meta.get("view_position")),
                   synthetic=source_format in SYNTHETIC_FORMATS or bool(meta.get("phantom")),
                   source_format=source_format)

    @classmethod
    def of_image(cls, img: LoadedImage) -> ImageFacts:
        """Facts from a loaded image: its metadata, and whether its pixels are in colour."""
        facts = cls.of_meta(img.meta, img.source_format)
        return replace(facts, colour=colour_share(img.display))

    @classmethod
    def of_ref(cls, ref: ImageRef) -> ImageFacts:
        """Facts from the state's image reference: modality, format and colour only.

        A ref carries no body part or view, so those are unknown here; the wrapper sees them.
        """
        return cls(modality=_code(ref.modality), synthetic=ref.source_format in SYNTHETIC_FORMATS,
                   source_format=ref.source_format, colour=ref.colour)

    def describe(self) -> str:
        """A few words for a note: ``"a clinical jpeg image, modality unknown"``."""
        kind = "a synthetic" if self.synthetic else f"a clinical {self.source_format}"
        parts = [f"{kind} image"]
        parts.append(f"modality {self.modality}" if self.modality else "modality unknown")
        if self.body_part:
            parts.append(f"body part {self.body_part}")
        if self.view:
            parts.append(f"view {self.view}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Verdict:
    """An image judged against a domain: ``inside``, ``outside`` or ``unknown``, and why."""

    status: Literal["inside", "outside", "unknown"]
    reason: str = ""


@dataclass(frozen=True)
class Domain:
    """The kinds of image a tool was validated on, and what it does with the others.

    Attributes:
        validated_on: one line, honest: what the tool was validated (or trained) on.
        modalities: DICOM modality codes inside (upper case); empty: any modality.
        body_parts: ``BodyPartExamined`` values inside (upper case, ``_`` for spaces); empty:
            any body part.
        projections: ``ViewPosition`` values inside (``PA``, ``AP``); empty: any view.
        synthetic_only: only medloop's own synthetic images (phantoms, test images) are inside;
            every clinical image is outside, whatever its metadata.
        clinical_only: only clinical images are inside; medloop's synthetic images are outside
            (an expert fitted on real cases has nothing to say about a phantom).
        grey_only: only grey-scale images are inside; a colour image (``COLOUR_SHARE``) is
            outside, whatever its metadata says.
        outside: ``"refuse"`` (``OutsideDomain``: the planner picks another tool) or
            ``"flag"`` (run, and mark the evidence) for an image clearly outside.
        unknown: what happens when the metadata cannot establish the domain (a JPEG without
            DICOM tags): ``"run"`` as inside, ``"flag"`` or ``"refuse"``.
        why: why these policies were chosen, for the reader of the declaration.
        applies: which calls the declaration covers, from their validated arguments (None:
            all); e.g. ``find``'s lungs targets, not its OCR of burned-in text.
    """

    validated_on: str
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    projections: frozenset[str] = frozenset()
    synthetic_only: bool = False
    clinical_only: bool = False
    grey_only: bool = False
    outside: Policy = "flag"
    unknown: UnknownPolicy = "run"
    why: str = ""
    applies: Callable[[Any], bool] | None = None

    @property
    def is_any(self) -> bool:
        """True when every image is inside: no check is needed."""
        return not (self.modalities or self.body_parts or self.projections
                    or self.synthetic_only or self.clinical_only or self.grey_only)

    def judge(self, facts: ImageFacts) -> Verdict:
        """Whether ``facts`` are inside this domain; the reason names the first mismatch."""
        if self.is_any:
            return Verdict("inside")
        if self.synthetic_only:
            if facts.synthetic:
                return Verdict("inside")
            return Verdict("outside", f"{facts.describe()}, not one of medloop's synthetic "
                                      "images")
        if self.clinical_only and facts.synthetic:
            return Verdict("outside", f"{facts.describe()}, not a clinical image")
        if self.grey_only and facts.colour is not None and facts.colour > COLOUR_SHARE:
            return Verdict("outside", f"a colour image ({facts.colour:.0%} of its pixels "
                                      "coloured), not a grey-scale CT, MR or radiograph")
        missing: list[str] = []
        for name, allowed, value in (("modality", self.modalities, facts.modality),
                                     ("body part", self.body_parts, facts.body_part),
                                     ("view", self.projections, facts.view)):
            if not allowed:
                continue
            if value is None:
                missing.append(name)
            elif value not in allowed:
                return Verdict("outside", f"{name} is {value}, not {'/'.join(sorted(allowed))}")
        if missing:
            return Verdict("unknown", f"{facts.describe()}: its {', '.join(missing)} cannot be "
                                      "established")
        return Verdict("inside")

    def admits(self, facts: ImageFacts) -> bool:
        """Whether the tool would run on the image at all (not refused)."""
        verdict = self.judge(facts)
        policy = {"inside": "run", "outside": self.outside, "unknown": self.unknown}
        return policy[verdict.status] != "refuse"

    def screen(self, facts: ImageFacts, tool: str) -> str | None:
        """The check the tool wrapper makes before running ``tool`` on an image.

        Returns None to run as usual, or the note to flag the evidence with.

        Raises:
            OutsideDomain: the declaration refuses this image (outside, or unknown).
        """
        verdict = self.judge(facts)
        if verdict.status == "inside":
            return None
        policy = self.outside if verdict.status == "outside" else self.unknown
        if policy == "run":
            return None
        if policy == "refuse":
            raise OutsideDomain(f"{tool} is validated on {self.validated_on} only; this image "
                                f"is outside that ({verdict.reason}): use another tool",
                                verdict.reason)
        return verdict.reason


ANY_IMAGE = Domain(validated_on="any image (pixel values and geometry, no learned model)")
"""The domain of a tool that makes no assumption about the image."""


def flag_evidence(ev: Evidence, note: str, validated_on: str) -> Evidence:
    """``ev`` marked as outside its tool's validated domain (a new object; ``ev`` unchanged).

    Sets ``data["out_of_domain"] = True`` and ``data["domain_note"]`` (joined with ``; `` to a
    note already there), lowers the score to at most ``FLAGGED_SCORE_FACTOR`` of the tool's own
    and prefixes the summary, once, with what the tool was validated for and why this is not it.
    """
    data = dict(ev.data)
    already = bool(data.get("out_of_domain"))  # flagged once already: the score dropped then
    earlier = str(data.get("domain_note") or "")
    data["domain_note"] = f"{earlier}; {note}" if earlier and note not in earlier else (
        earlier or note)
    data["out_of_domain"] = True
    base = 1.0 if ev.score is None else ev.score
    score = base if already else round(min(base * FLAGGED_SCORE_FACTOR, FLAGGED_SCORE_FACTOR), 4)
    prefix = "Outside what this tool was validated for"
    summary = ev.summary
    if not summary.startswith(prefix):
        summary = f"{prefix} ({validated_on}; {note}): {summary}"
    return ev.model_copy(update={"data": data, "score": score, "summary": summary})
