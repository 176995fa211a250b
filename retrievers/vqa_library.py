"""A case library from labelled question–answer cases (the VQA-RAD dev set's JSON-lines format).

The format (``../shared/data/vqa_rad_dev/README.md``), one item a line, image paths relative to
the file's folder::

    {"id": "vqa_rad_dev/4", "images": ["images/synpic28602.jpg"], "question": "...",
     "answer": "ultrasound", "answer_type": "open", "organ": "CHEST", "category": "MODALITY"}

Each distinct image becomes one case of a ``retrievers.library.CaseLibrary`` (its vector in the
image index, its labels in SQLite). The labels are ``organ:<organ>`` from the items' ``organ``
field, and ``modality:<ct|mr|xray|us>`` / ``plane:<axial|coronal|sagittal|frontal|lateral>``
read from what the image's own questions and answers say (an open answer "MRI - T2 weighted",
a question "What plane is this X-ray in?", a yes/no question answered yes; a question answered
no says nothing). Images whose cases never mention a modality get no modality label.

The question–answer pairs are kept beside the library, since a case row holds one report, not
many questions: ``ROOT/qa.jsonl`` (one pair a line, with its ``case_id``) and
``ROOT/qa_vectors.npy`` (their MiniLM question vectors, ``(N, 384)`` float32, same order), with
``ROOT/qa.json`` naming the text embedder. ``retrievers.case_answers`` answers from them.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.embedders import Embedder, image_embedder_by_name, shared_minilm
from retrievers.library import CaseLibrary, NewCase
from tools.errors import ToolInputError
from tools.question_form import asks_normality

__all__ = [
    "DEFAULT_IMAGE_EMBEDDER",
    "MODALITY_CODES",
    "QA_FILE",
    "QABank",
    "QAItem",
    "build_vqa_library",
    "choice_question",
    "describe_question",
    "folds_by_image",
    "image_labels",
    "is_vqa_items",
    "label_mentions",
    "label_question",
    "library_image_vectors",
    "load_display",
    "load_qa",
    "normalise_answer",
    "open_case_library",
    "open_label_question",
    "read_items",
    "save_qa",
    "vqa_items_file",
]

QA_FILE = "qa.jsonl"
"""The question-answer pairs of a library built from labelled cases, one JSON a line."""

DEFAULT_IMAGE_EMBEDDER = "litemedsam-max-v1"
"""The image embedder a labelled-case library is built with (``image_embedder_by_name``),
chosen by ``bench/case_library.py`` (neighbours' agreement on organ / modality / plane,
cross-validated by image on the VQA-RAD dev set, centred; the table is in
``bench/case_library.md``)."""

MODALITY_CODES = {"ct": "CT", "mr": "MR", "xray": "CR", "us": "US"}
"""Modality label -> the DICOM-style code kept in the library's ``modality`` column."""

# Words that name a modality or a plane, in questions and answers. Order matters only for
# reading: each pattern is searched on its own.
_MODALITY_WORDS = {
    "ct": r"\bct\b|computed tomograph|\bcta\b",
    "mr": r"\bmri?\b|\bmr[a-]|flair|\bt1\b|\bt2\b|t[12][- ]weighted|\bdwi\b|diffusion weighted"
          r"|gadolinium",
    "xray": r"x-? ?ray|xray|radiograph|plain film|\bfilm\b|\bkub\b|\bpa\b|\bap\b"
            r"|posteroanterior|anteroposterior",
    "us": r"ultrasound|sonogra",
}
_PLANE_WORDS = {
    "axial": r"\baxial\b|transverse",
    "coronal": r"\bcoronal\b",
    "sagittal": r"sagg?itt?al",
    "frontal": r"\bpa\b|\bap\b|posteroanterior|anteroposterior|anterior posterior",
    "lateral": r"\blateral (film|view|radiograph|image)\b|\bis this a lateral\b",
}
_ORGAN_WORDS = {
    "head": r"\bhead\b|brain|skull|cran|cerebr|\bcns\b|central nervous",
    "chest": r"chest|lung|thora|cardio|pulmon|respirat|\bheart\b",
    "abd": r"abdom|\babd\b|liver|kidney|renal|gastro|bowel|pelvi|pancrea|splee|hepat",
}
_NEGATING = re.compile(r"\bnot\b|\bnon[- ]|\bwithout\b")


@dataclass(frozen=True)
class QAItem:
    """One labelled question about one image.

    ``image`` is the path relative to the items file's folder (the case id in a library);
    ``answer_type`` is ``yesno`` or ``open``; ``organ`` is HEAD / CHEST / ABD or None;
    ``category`` is VQA-RAD's question type (PRES, POS, MODALITY, PLANE, ORGAN, ...).
    """

    id: str
    image: str
    question: str
    answer: str
    answer_type: str
    organ: str | None = None
    category: str | None = None


def is_vqa_items(path: str | Path) -> bool:
    """True when ``path`` is a JSON-lines file whose first item has ``images`` and ``question``."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in {".jsonl", ".json"}:
        return False
    with p.open() as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "images" in first and "question" in first
    return False


def vqa_items_file(path: str | Path) -> Path | None:
    """The items file ``path`` names (itself, or ``items.jsonl`` in a folder), if it is one.

    What ``medloop index build`` checks to tell the dev set's format from a folder layout.
    """
    p = Path(path)
    candidate = p / "items.jsonl" if p.is_dir() else p
    return candidate if is_vqa_items(candidate) else None


def read_items(path: str | Path) -> list[QAItem]:
    """The items of a JSON-lines file (see the module docstring); only the first image counts.

    Raises ``ToolInputError`` naming the line when an item lacks a field or an image.
    """
    p = Path(path)
    items: list[QAItem] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        images = d.get("images") or ([d["image"]] if d.get("image") else [])
        if not images or not d.get("question") or d.get("answer") is None:
            raise ToolInputError(f"{p}:{n}: an item needs images, question and answer")
        answer = str(d["answer"]).strip()
        kind = d.get("answer_type") or ("yesno" if answer.lower() in ("yes", "no") else "open")
        items.append(QAItem(id=str(d.get("id") or f"{p.stem}/{n}"), image=str(images[0]),
                            question=str(d["question"]).strip(), answer=answer,
                            answer_type=str(kind).lower(), organ=d.get("organ") or None,
                            category=d.get("category") or None))
    return items


def normalise_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, spaces collapsed.

    The normalised exact match VQA-RAD's open answers are usually scored by.
    """
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return " ".join(w for w in words if w not in {"a", "an", "the"})


def _mentions(text: str, table: dict[str, str]) -> set[str]:
    low = text.lower()
    return {label for label, pattern in table.items() if re.search(pattern, low)}


def label_mentions(text: str) -> dict[str, set[str]]:
    """The classes of each whole-image task that an answer names.

    "Axial CT of the head" -> ``{"modality": {"ct"}, "organ": {"head"}, "plane": {"axial"}}``;
    "PA" -> ``{"plane": {"frontal"}}``. For reading what an answer says the image is against
    what a trained head said (``agent.trust.agreement``); tasks it names nothing of are left
    out.
    """
    low = text.lower()
    planes = _mentions(low, _PLANE_WORDS) | ({"frontal"} if re.search(r"\bfrontal\b", low)
                                              else set())
    said = {"modality": _mentions(low, _MODALITY_WORDS) - (
                {"xray"} if planes == {"frontal"} and not re.search(r"x-? ?ray|xray|radiograph|"
                                                                     r"film", low) else set()),
            "organ": _mentions(low, _ORGAN_WORDS), "plane": planes}
    return {task: classes for task, classes in said.items() if classes}


def _evidence_texts(item: QAItem) -> list[str]:
    """What an item asserts about its image: the question unless answered no, an open answer.

    "Is this a CT image? — no" asserts nothing about what it is; "What plane is this X-ray
    in? — PA" asserts both X-ray and PA. An answer that negates ("non-contrast") is kept out.
    """
    out = []
    if item.answer_type != "yesno" or item.answer.lower() == "yes":
        q = item.question
        if not re.search(r"\bor\b", q.lower()):  # "Is this an AP or PA film?" names both
            out.append(q)
    if item.answer_type == "open" and not _NEGATING.search(item.answer.lower()):
        out.append(item.answer)
    if "not represent" in item.question.lower() or "not pictured" in item.question.lower():
        out = []
    return out


_LABEL_QUESTION = re.compile(
    r"^\s*(is|was)\s+(this|it|the (image|scan|study|film|picture|section)|this (image|scan|"
    r"study|film|picture|section))\b", re.IGNORECASE)
_NOT_A_LABEL = re.compile(r"contrast|enhanc|weighted|\bt[12]\b|flair|artifact|expos|phase|"
                          r"kind|type|kub|\bap\b|\bpa\b|anterior|posterior|\bor\b|\bnot\b",
                          re.IGNORECASE)
"""Words that qualify what a question names, so that it asks something else; a question about
normality (``asks_normality``: "Is this a normal CT?") is not one about the modality either."""


_REGIONS = {"head": ("head", "brain", "skull"), "chest": ("chest", "thorax"),
            "abd": ("abdomen", "abdominal region")}
_REGION_QUESTION = re.compile(
    r"^(?:is|was)\s+(?:this|it|the\s+(?:image|scan|study|film|picture))\s+"
    r"(?:(?:an?\s+)?(?:image|picture|scan|view|study|film|section)\s+of\s+)?(?:the\s+)?"
    r"(head|brain|skull|chest|thorax|abdomen|abdominal region)\s*\??$", re.IGNORECASE)
"""A question whether the image shows a body region, and nothing else: "Is this the brain?",
"Is this an image of the chest?" (not "Is this the brain stem?", nor "Is this a chest CT?")."""


def label_question(question: str) -> tuple[str, str] | None:
    """The ``(task, value)`` a yes/no question asks about the whole image, or None.

    "Is this an MRI?" -> ``("modality", "mr")``; "Is the image in the axial plane?" ->
    ``("plane", "axial")``; "Is this the brain?" -> ``("organ", "head")`` (a body region and
    nothing else, ``_REGION_QUESTION``). Only questions about what the image IS (opening "is
    this ...", "is the image ...") that name exactly one modality or one plane (axial,
    coronal, sagittal, lateral) and nothing that qualifies it (contrast, weighting, a kind of
    film, AP/PA, "or", "not", normality): "Is this CT enhanced by IV contrast?" asks about
    contrast, not about CT, and "Is this a normal CT?" about the findings.
    """
    if (not _LABEL_QUESTION.match(question) or _NOT_A_LABEL.search(question)
            or asks_normality(question)):
        return None
    region = _REGION_QUESTION.match(" ".join(question.split()))
    if region:
        return "organ", next(o for o, words in _REGIONS.items() if region[1].lower() in words)
    modalities = _mentions(question, _MODALITY_WORDS)
    planes = _mentions(question, _PLANE_WORDS) - {"frontal"}
    if planes == {"lateral"} and modalities == {"xray"}:  # "a lateral film": the film's plane
        modalities = set()
    if len(modalities) + len(planes) != 1:
        return None
    return ("modality", modalities.pop()) if modalities else ("plane", planes.pop())


_NOT_A_CHOICE = re.compile(r"contrast|enhanc|weighted|\bt[12]\b|flair|artifact|expos|phase|"
                           r"\bkub\b|\bap\b|\bpa\b|anterior|posterior|\bnot\b|\bnon\b|"
                           r"\bboth\b|\bneither\b", re.IGNORECASE)


def choice_question(question: str) -> tuple[str, list[str]] | None:
    """The task and the alternatives of a question offering a choice of classes, or None.

    "Is this a CT or an MRI?" -> ``("modality", ["ct", "mr"])``; "Is this an axial or a
    coronal image?" -> ``("plane", ["axial", "coronal"])``. Only a question with "or" that
    names two or more classes of one task and none of the other, and nothing that qualifies
    them (contrast, weighting, AP/PA, "not"): "Was oral or IV contrast used?" asks contrast.
    """
    q = " ".join(question.split())
    if not re.search(r"\bor\b", q, re.IGNORECASE) or _NOT_A_CHOICE.search(q):
        return None
    modalities = _mentions(q, _MODALITY_WORDS)
    planes = _mentions(q, _PLANE_WORDS) - {"frontal"}  # AP and PA are not a choice here
    if re.search(r"\bfrontal\b", q, re.IGNORECASE):
        planes.add("frontal")
    if len(modalities) >= 2 and not planes:
        return "modality", sorted(modalities)
    if len(planes) >= 2 and not modalities:
        return "plane", sorted(planes)
    return None


_OPEN_LABEL = {
    "plane": re.compile(r"\b(what|which)\b[^?]*\b(plane|section|cut)\b|"
                        r"^\s*how is (the|this) (image|film|scan|picture) oriented\b"),
    "modality": re.compile(r"\b(what|which)\b[^?]*\b(modality|kind of (image|imaging|scan)|"
                           r"type of (image|imaging|scan))\b|^\s*(the )?imaging modality\b"),
    "organ": re.compile(r"\b(what|which|name)\b[^?]*\b(organ|organ system|part of the body|"
                        r"body part|region of the body|area of the body)\b"),
}
# asks about a finding, a sub-kind (a sequence, a contrast) or what is NOT shown, not the image
_NOT_OPEN_LABEL = re.compile(
    r"\bnot\b|contrast|enhanc|sequence|weight|\bt[12]\b|flair|\bdwi\b|diffusion|phase|window|"
    r"ventricle|lobe|abnormal|lesion|mass|tumou?r|fracture|patholog|affect|injur|diseas|where|"
    r"located|bottom|top of|involv|superior|inferior|\bnear\b|adjacent|next to|visuali|"
    r"(in|on) this (plane|section)|\bor\b")
_MODALITY_NAMED = re.compile(r"\b(mri?|ct|x-? ?ray|radiograph|film|ultrasound)\b")


def open_label_question(question: str) -> str | None:
    """The label task an open question asks of the whole image, or None.

    "In what plane is this image?" -> ``"plane"``; "What imaging modality was used?" ->
    ``"modality"``; "What organ system is shown?" -> ``"organ"``: questions the trained heads
    answer (0.92-1.00 right on the images carrying those labels, ``bench/case_library.md``).
    Not a question that names the modality while asking its kind ("What type of MRI is
    this?" asks the sequence), one about a finding ("Which organ is affected?"), about what
    is not shown, or one offering alternatives (a head cannot tell AP from PA).
    """
    q = " ".join(question.lower().split())
    if _NOT_OPEN_LABEL.search(q):
        return None
    for task, pattern in _OPEN_LABEL.items():
        if pattern.search(q):
            if task == "modality" and _MODALITY_NAMED.search(q):
                return None
            return task
    return None


_DESCRIBE = re.compile(
    r"^\s*((can|could|would|will)\s+you\s+)?(please\s+)?"
    r"(describe|summari[sz]e|interpret|read|explain)\s+(this|the)\s+"
    r"(image|scan|film|picture|study|radiograph|x-?ray|ct|mri?)\s*[.?!]?\s*$|"
    r"\bwhat\s+(do|can)\s+you\s+see\b|"
    r"^\s*what\s+(does|do)\s+(this|the)\s+(image|scan|film|picture|study)\s+show\s*[.?!]?\s*$|"
    r"^\s*what\s+is\s+(shown|seen|visible|depicted)\s+(in|on)\s+(this|the)\s+"
    r"(image|scan|film|picture)\s*[.?!]?\s*$|"
    r"^\s*what\s+(is|'s)\s+this(\s+(image|scan|film|picture))?\s*[.?!]?\s*$",
    re.IGNORECASE)


def describe_question(question: str) -> bool:
    """Whether a question asks for the image as a whole to be described.

    "Describe this image", "Can you describe this scan?", "What do you see?", "What does this
    scan show?": not one of the
    library's pairs asks that (none of the 988 dev questions matches), so the neighbours have
    no answer, while the trained heads can say what the image is. A question that names a
    part ("Describe the appendix", "How would you describe the lesion?") asks a finding.
    """
    return bool(_DESCRIBE.search(" ".join(question.split())))


def image_labels(items: Iterable[QAItem]) -> dict[str, dict[str, str]]:
    """Per image: ``{"organ": ..., "modality": ..., "plane": ...}`` (each only when known).

    Organ comes from the items' field (lower-cased); modality and plane are the label named
    most often by the image's own questions and answers (``_evidence_texts``); a tie between
    two labels leaves it unknown rather than guessing. A plane named on an image that its
    texts call CT or MR and "frontal" (PA/AP) is dropped as contradictory.
    """
    organs: dict[str, Counter[str]] = defaultdict(Counter)
    modal: dict[str, Counter[str]] = defaultdict(Counter)
    plane: dict[str, Counter[str]] = defaultdict(Counter)
    seen: set[str] = set()
    for it in items:
        seen.add(it.image)
        if it.organ:
            organs[it.image][it.organ.lower()] += 1
        for text in _evidence_texts(it):
            modal[it.image].update(_mentions(text, _MODALITY_WORDS))
            plane[it.image].update(_mentions(text, _PLANE_WORDS))
    out: dict[str, dict[str, str]] = {}
    for image in sorted(seen):
        labels: dict[str, str] = {}
        for task, counts in (("organ", organs[image]), ("modality", modal[image]),
                             ("plane", plane[image])):
            top = counts.most_common(2)
            if top and (len(top) == 1 or top[0][1] > top[1][1]):
                labels[task] = top[0][0]
        if labels.get("plane") == "frontal" and labels.get("modality") in ("ct", "mr"):
            del labels["plane"]
        out[image] = labels
    return out


def folds_by_image(images: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """A fold number per image (a seeded shuffle of the sorted images, dealt round-robin).

    Cross-validation splits by IMAGE: every question about one image lands in one fold, so no
    image is both in the library (or a head's fit) and in the fold being scored.
    """
    ordered = sorted(set(images))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[j]: pos % folds for pos, j in enumerate(order.tolist())}


def load_display(path: str | Path) -> np.ndarray:
    """A uint8 display image: grey ``(H, W)``, or RGB ``(H, W, 3)`` when it has colour."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


@dataclass
class QABank:
    """The question–answer pairs of a library with their question vectors.

    ``items[i]`` belongs to case ``items[i].image``; ``vectors[i]`` is its question's unit
    vector ``(N, dim)`` from the text embedder named ``embedder``.
    """

    items: list[QAItem]
    vectors: np.ndarray
    embedder: dict[str, Any]

    def by_case(self) -> dict[str, list[int]]:
        """Case id -> the positions of its pairs."""
        out: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(self.items):
            out[it.image].append(i)
        return dict(out)


def save_qa(root: str | Path, bank: QABank) -> None:
    """Write ``qa.jsonl``, ``qa_vectors.npy`` and ``qa.json`` into the library folder."""
    root = Path(root)
    with (root / QA_FILE).open("w") as f:
        for it in bank.items:
            f.write(json.dumps(asdict(it)) + "\n")
    np.save(root / "qa_vectors.npy", np.asarray(bank.vectors, np.float32))
    (root / "qa.json").write_text(json.dumps({"text_embedder": bank.embedder,
                                              "pairs": len(bank.items)}, indent=2))


def load_qa(root: str | Path) -> QABank:
    """The pairs saved by ``save_qa``; ``FileNotFoundError`` when the library has none."""
    root = Path(root)
    if not (root / QA_FILE).exists():
        raise FileNotFoundError(f"{root}: this library holds no question–answer pairs "
                                "(build it from a JSON-lines items file)")
    items = [QAItem(**json.loads(line)) for line in (root / QA_FILE).read_text().splitlines()
             if line.strip()]
    meta = json.loads((root / "qa.json").read_text())
    return QABank(items, np.load(root / "qa_vectors.npy"), meta["text_embedder"])


def case_labels(labels: dict[str, str]) -> list[str]:
    """The library labels of one image: ``task:value`` strings (``organ:chest``)."""
    return [f"{task}:{value}" for task, value in sorted(labels.items())]


def build_vqa_library(items_path: str | Path, root: str | Path,
                      image_embedder: Embedder, text_embedder: Embedder | None = None,
                      images: Sequence[str] | None = None,
                      image_vectors: Mapping[str, np.ndarray] | None = None) -> CaseLibrary:
    """A new library in ``root`` from the items file (only ``images`` of it when given).

    One case per image (case id = the image's relative path), labelled by ``image_labels``;
    the pairs and their question vectors (``text_embedder``, default the packaged MiniLM)
    are saved beside it. ``image_vectors`` (image -> its vector from ``image_embedder``, e.g.
    read from a library of every image) saves embedding them again: the cross-validation
    folds of one set share their images' vectors. Returns the library opened for writing
    (close it when done).
    """
    items_path = Path(items_path)
    items = read_items(items_path)
    if images is not None:
        keep = set(images)
        items = [it for it in items if it.image in keep]
    if not items:
        raise ToolInputError(f"{items_path}: no items to build a library from")
    labels = image_labels(items)
    text_embedder = text_embedder or shared_minilm()
    lib = CaseLibrary.create(root, image_embedder, None, kind="flat")
    cases = []
    for image in sorted({it.image for it in items}):
        lab = labels.get(image, {})
        cases.append(NewCase(case_id=image, display=load_display(items_path.parent / image),
                             image=image, labels=case_labels(lab),
                             modality=MODALITY_CODES.get(lab.get("modality", ""))))
    if image_vectors is not None and all(c.case_id in image_vectors for c in cases):
        lib.add_embedded(cases, np.stack([image_vectors[c.case_id] for c in cases]), None)
    else:
        lib.add(cases)
    vectors = text_embedder.embed_texts([it.question for it in items])
    save_qa(root, QABank(items, vectors, dict(text_embedder.identity)))
    return lib


def library_image_vectors(library: CaseLibrary) -> dict[str, np.ndarray]:
    """Case id -> image vector of every case with one (to build other libraries from)."""
    index = library.image_index
    if index is None:
        return {}
    rows = sorted(int(i) for i in index.ids())
    records = library.db.get(rows)
    vecs = index.reconstruct(rows) if rows else np.zeros((0, 0))
    return {records[r].case_id: vecs[k] for k, r in enumerate(rows) if r in records}


def open_case_library(root: str | Path, writable: bool = False) -> CaseLibrary:
    """Open a library whose image embedder may be one of the measured ones.

    ``CaseLibrary.open`` rebuilds only the embedders ``embedder_from_identity`` knows; this
    names the image embedder from the manifest with ``image_embedder_by_name`` first.
    """
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    ident = manifest.get("image_embedder") or {}
    image = image_embedder_by_name(ident["name"]) if ident.get("name") else None
    return CaseLibrary.open(root, image_embedder=image, writable=writable)
