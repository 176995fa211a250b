"""Readers for benchmark suites, from a local path: nothing here downloads anything.

``load_suite(spec)`` understands:

- ``phantoms`` — the built-in ground-truth phantom suite (``agent.evaluation.phantoms``), 100 items;
  ``phantoms:N`` for N items, ``phantoms:N:SEED`` for another seed;
- a VQA-RAD JSON file (a list of objects with ``image_name``, ``question``, ``answer``,
  ``answer_type`` CLOSED/OPEN); images are looked up beside the file and in its image folder;
- a SLAKE JSON file (``img_name``, ``question``, ``answer``, ``answer_type``, ``q_lang``; only
  English questions are kept); images under ``imgs/`` beside the file;
- a PathVQA-style JSON file (``image``, ``question``, ``answer``);
- a ChestAgentBench-style JSON / JSON-lines file of multiple-choice cases (``question``, a
  letter ``answer``, ``images``, options in ``options``/``choices`` or written in the question
  as ``A) ... B) ...``);
- the generic JSON-lines format (``*.jsonl``), one object per line::

      {"id": "q1", "images": ["img/ct1.dcm"], "question": "How many nodules?",
       "answer": "2", "answer_type": "count",          # yesno | count | number | choice | open
       "options": [], "tolerance": null,               # number: allowed absolute error
       "boxes": [[10, 20, 40, 50]], "value_mm": null}  # optional ground truth for grounding

  Relative image paths are relative to the file. Any other key (VQA-RAD's ``organ`` and
  ``category``, say) is kept in the item's ``meta``; a question category is normalised
  (``normalise_category``: ``"ATRIB"`` → ``ATTRIB``, ``"PRES, ATTRIB"`` → primary ``PRES``,
  all of them in ``meta["categories"]``) so the report can split by it. The format is guessed
  from the keys of the first record; ``FORMAT:PATH`` (``vqa-rad:``, ``slake:``, ``pathvqa:``,
  ``chestagentbench:``, ``jsonl:``) forces one. A malformed file raises ``SuiteError`` naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.evaluation.items import AnswerType, EvalItem
from tools.errors import MedloopError

__all__ = ["FORMATS", "SuiteError", "load_suite", "normalise_category", "phantom_items"]

# VQA-RAD's question types as published, with the misspellings and case the files carry.
_CATEGORY_ALIASES = {"ATRIB": "ATTRIB", "ATTRIBUTE": "ATTRIB", "POSITION": "POS",
                     "PRESENCE": "PRES", "ABNORMALITY": "ABN", "MODALITY": "MODALITY",
                     "COLOUR": "COLOR"}
_GENERIC_KEYS = frozenset({"id", "images", "question", "answer", "answer_type", "options",
                           "tolerance", "boxes", "value_mm", "meta"})


class SuiteError(MedloopError, ValueError):
    """A benchmark file that cannot be read as the format it claims."""


def phantom_items(n: int = 100, seed: int = 0) -> list[EvalItem]:
    """The built-in phantom suite as evaluation items."""
    from agent.evaluation.phantoms import phantom_suite

    out = []
    for it in phantom_suite(n, seed):
        out.append(EvalItem(
            id=it.id, question=it.question, answer=it.answer, answer_type=it.answer_type,
            images=[it.phantom.image], options=list(it.options),
            boxes=[tuple(float(v) for v in b) for b in it.boxes],  # type: ignore[misc]
            value_mm=it.value_mm, tolerance=it.tolerance_mm,
            meta={"question_kind": it.question_kind, "phantom_kind": it.phantom.kind,
                  "n_lesions": len(it.phantom.lesions), "list_options": False},
        ))
    return out


def normalise_category(raw: object) -> tuple[str, list[str]]:
    """``(primary, all)`` question categories from a label such as ``"PRES, ATTRIB"``.

    Upper case, VQA-RAD's misspellings fixed (``ATRIB`` → ``ATTRIB``, ``Other`` → ``OTHER``);
    a multi-category label keeps its first category as the primary one (the one the report
    splits by) and lists all of them. An empty label gives ``("", [])``.
    """
    parts = [p.strip().upper() for p in re.split(r"[,;/|]", str(raw or "")) if p.strip()]
    cats = list(dict.fromkeys(_CATEGORY_ALIASES.get(p, p) for p in parts))
    return (cats[0] if cats else ""), cats


def _split_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its category normalised and its organ upper-cased (when present)."""
    out = dict(meta)
    if "category" in out:
        out["category"], out["categories"] = normalise_category(out["category"])
    if out.get("organ"):
        out["organ"] = str(out["organ"]).strip().upper()
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            recs = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            recs = data if isinstance(data, list) else data.get("data") or data.get("questions")
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path.name}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise SuiteError(f"{path.name}: expected a list of objects")
    return recs


def _image(root: Path, name: str, folders: tuple[str, ...]) -> str:
    for folder in ("", *folders):
        p = root / folder / name
        if p.exists():
            return str(p)
    return str(root / (folders[0] if folders else "") / name)


def _closed(answer: str) -> AnswerType:
    """Yes/no answers are graded as such; every other answer (closed or open) by match."""
    return "yesno" if str(answer).strip().lower() in ("yes", "no") else "open"


def _need(rec: dict[str, Any], keys: tuple[str, ...], path: Path, i: int) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise SuiteError(f"{path.name}: record {i} lacks {', '.join(missing)}")


def _vqa_rad(path: Path, recs: list[dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, r in enumerate(recs):
        _need(r, ("image_name", "question", "answer"), path, i)
        ans = str(r["answer"])
        out.append(EvalItem(
            id=str(r.get("qid", i)), question=str(r["question"]), answer=ans,
            answer_type=_closed(ans),
            images=[_image(path.parent, str(r["image_name"]),
                           ("VQA_RAD Image Folder", "images"))],
            meta=_split_meta({
                **{k: r[k] for k in ("question_type", "answer_type", "image_organ") if k in r},
                **({"category": r["question_type"]} if "question_type" in r else {}),
                **({"organ": r["image_organ"]} if "image_organ" in r else {})}),
        ))
    return out


def _slake(path: Path, recs: list[dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, r in enumerate(recs):
        if r.get("q_lang", "en") != "en":
            continue
        _need(r, ("img_name", "question", "answer"), path, i)
        ans = str(r["answer"])
        out.append(EvalItem(
            id=str(r.get("qid", i)), question=str(r["question"]), answer=ans,
            answer_type=_closed(ans),
            images=[_image(path.parent, str(r["img_name"]), ("imgs", "images"))],
            meta={k: r[k] for k in ("content_type", "modality", "location", "answer_type")
                  if k in r},
        ))
    return out


def _pathvqa(path: Path, recs: list[dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, r in enumerate(recs):
        img = r.get("image") or r.get("image_name") or r.get("img_id")
        if img is None:
            raise SuiteError(f"{path.name}: record {i} lacks image")
        _need(r, ("question", "answer"), path, i)
        name = str(img) if Path(str(img)).suffix else f"{img}.jpg"
        ans = str(r["answer"])
        out.append(EvalItem(
            id=str(r.get("id", i)), question=str(r["question"]), answer=ans,
            answer_type="yesno" if ans.strip().lower() in ("yes", "no") else "open",
            images=[_image(path.parent, name, ("images",))],
        ))
    return out


_OPTION = re.compile(r"(?:^|\s|\n)\(?([A-H])[\).:]\s+(.+?)(?=\s+\(?[A-H][\).:]\s|\n|$)")


def _chestagentbench(path: Path, recs: list[dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, r in enumerate(recs):
        _need(r, ("question", "answer"), path, i)
        q = str(r["question"])
        opts = r.get("options") or r.get("choices")
        if isinstance(opts, dict):
            opts = [opts[k] for k in sorted(opts)]
        if not opts:
            found = _OPTION.findall(q)
            opts = [text.strip() for _, text in found]
            if found:
                q = q[: q.find(f"{found[0][0]})") if f"{found[0][0]})" in q else len(q)].strip()
        if not opts:
            raise SuiteError(f"{path.name}: record {i} has no options")
        imgs = r.get("images") or ([r["image"]] if r.get("image") else [])
        out.append(EvalItem(
            id=str(r.get("case_id") or r.get("id") or i), question=q,
            answer=str(r["answer"]).strip(), answer_type="choice",
            images=[_image(path.parent, str(p), ("images", "figures")) for p in imgs],
            options=[str(o) for o in opts],
        ))
    return out


def _generic(path: Path, recs: list[dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, r in enumerate(recs):
        _need(r, ("question", "answer"), path, i)
        kind = str(r.get("answer_type", "open"))
        if kind not in ("yesno", "count", "number", "choice", "open"):
            raise SuiteError(f"{path.name}: record {i} has unknown answer_type {kind!r}")
        out.append(EvalItem(
            id=str(r.get("id", i)), question=str(r["question"]), answer=str(r["answer"]),
            answer_type=kind,  # type: ignore[arg-type]
            images=[_image(path.parent, str(p), ()) for p in r.get("images") or []],
            options=[str(o) for o in r.get("options") or []],
            boxes=[tuple(float(v) for v in b) for b in r.get("boxes") or []],  # type: ignore[misc]
            value_mm=r.get("value_mm"), tolerance=r.get("tolerance"),
            meta=_split_meta({**{k: v for k, v in r.items() if k not in _GENERIC_KEYS},
                              **dict(r.get("meta") or {})}),
        ))
    return out


FORMATS: dict[str, Callable[[Path, list[dict[str, Any]]], list[EvalItem]]] = {
    "vqa-rad": _vqa_rad,
    "slake": _slake,
    "pathvqa": _pathvqa,
    "chestagentbench": _chestagentbench,
    "jsonl": _generic,
}


def _guess(path: Path, first: dict[str, Any]) -> str:
    if "image_name" in first and "question_type" in first:
        return "vqa-rad"
    if "img_name" in first:
        return "slake"
    if ("answer_type" in first and first.get("answer_type") in (
            "yesno", "count", "number", "choice", "open")) or (path.suffix == ".jsonl" and (
            "images" in first and "options" not in first)):
        return "jsonl"
    if "options" in first or "choices" in first or re.search(r"\bA\)", str(first.get(
            "question", ""))):
        return "chestagentbench"
    if "image_name" in first:
        return "vqa-rad"
    if "image" in first or "img_id" in first:
        return "pathvqa"
    return "jsonl"


def load_suite(spec: str) -> list[EvalItem]:
    """The items of ``spec`` (see the module docstring).

    Raises ``SuiteError`` or ``FileNotFoundError`` with a one-line message.
    """
    if spec == "phantoms" or spec.startswith("phantoms:"):
        parts = spec.split(":")[1:]
        try:
            n = int(parts[0]) if parts else 100
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError as exc:
            raise SuiteError(f"bad suite {spec!r}: expected phantoms[:N[:SEED]]") from exc
        return phantom_items(n, seed)
    fmt, sep, rest = spec.partition(":")
    if sep and fmt in FORMATS:
        path = Path(rest)
    else:
        fmt, path = "", Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such benchmark file")
    recs = _records(path)
    if not recs:
        raise SuiteError(f"{path.name}: no items")
    return FORMATS[fmt or _guess(path, recs[0])](path, recs)
