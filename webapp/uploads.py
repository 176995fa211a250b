"""Uploads: files from the browser into the store, through the same ingest as the graph's.

Each file goes through ``tools.ingest.ingest_path``, the function the graph's *ingest* node
uses, so an uploaded volume (NIfTI, a DICOM series) arrives with its middle axial, coronal and
sagittal planes stored beside it, and the planner sees them as it would for a path. Only
de-identified metadata is kept (shown as the "de-identified header"); the raw upload is deleted
from Gradio's upload folder shortly after it has been read.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import AgentContext
from tools.errors import IngestError
from tools.image import ImageRef, LoadedImage
from tools.ingest import ingest_path

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "RAW_UPLOAD_TTL_S",
    "UploadResult",
    "forget_upload",
    "ingest_uploads",
    "upload_status",
]

DEFAULT_MAX_UPLOAD_MB = 100
RAW_UPLOAD_TTL_S = 120.0  # seconds a raw (identifiable) upload stays on disk after it was read


@dataclass
class UploadResult:
    """What arrived.

    Attributes:
        image_ids: every stored id, in upload order, ready for the graph's ``images``: a
            volume's id is followed by the ids of its middle planes.
        headers: one de-identified header per uploaded file, keyed by the file's own id
            (a volume's ``planes`` lists its plane ids).
        errors: one line per file that could not be used.
        previews: (display image, caption) pairs for the gallery, planes included.
    """

    image_ids: list[str] = field(default_factory=list)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    previews: list[tuple[np.ndarray, str]] = field(default_factory=list)


def ingest_uploads(
    ctx: AgentContext,
    paths: Sequence[str],
    max_bytes: int,
    upload_root: str | Path | None = None,
    delete_after_s: float = 0.0,
) -> UploadResult:
    """Load and de-identify each upload into the store; never raises for a bad file.

    A file outside ``upload_root`` (when given) is refused: the app reads only what the
    browser uploaded, never a path a client names. Raw uploads inside ``upload_root`` are
    deleted ``delete_after_s`` seconds after they were read, so identifiers in them do not
    linger on disk. Not at once in the app: Gradio stores identical uploads at one path, and
    a second session uploading the same file at the same moment must still find it.
    """
    res = UploadResult()
    root = Path(upload_root).resolve() if upload_root is not None else None
    for raw in paths:
        p = Path(raw)
        try:
            img, refs = _ingest_one(ctx, p, max_bytes, root)
        except IngestError as exc:
            res.errors.append(str(exc))
            continue
        except Exception as exc:  # the app must survive any file; the user gets one line
            res.errors.append(f"{p.name}: could not be read ({type(exc).__name__})")
            continue
        finally:
            if root is not None and p.is_file() and p.resolve().is_relative_to(root):
                forget_upload(p, delete_after_s)
        _record(ctx, res, img, refs)
    return res


def _ingest_one(
    ctx: AgentContext, p: Path, max_bytes: int, root: Path | None
) -> tuple[LoadedImage, list[ImageRef]]:
    """One upload through ``ingest_path`` once it is known to be ours and under the limit."""
    if root is not None and not p.resolve().is_relative_to(root):
        raise IngestError(f"{p.name}: not an uploaded file")
    if p.is_file() and p.stat().st_size > max_bytes:
        raise IngestError(
            f"{p.name}: {p.stat().st_size / 1e6:.1f} MB is over the "
            f"{max_bytes / 1e6:.0f} MB upload limit"
        )
    return ingest_path(ctx.store, p)


def _record(ctx: AgentContext, res: UploadResult, img: LoadedImage, refs: list[ImageRef]) -> None:
    """Add one ingested file (its ref first, then a volume's planes) to ``res``."""
    ref, planes = refs[0], refs[1:]
    res.image_ids += [r.id for r in refs]
    res.headers[ref.id] = {
        "summary": ref.summary,
        "source_format": img.source_format,
        "shape": list(img.pixels.shape),
        "spacing_mm": list(img.spacing_mm) if img.spacing_mm else None,
        "spacing_source": img.spacing_source,
        "metadata": img.meta,
        "notes": img.notes,
        "planes": {r.plane or "plane": r.id for r in planes},
    }
    res.previews.append((img.display, ref.id))
    res.previews += [(ctx.store.get(r.id).display, f"{r.id} ({r.plane} plane)") for r in planes]


def forget_upload(path: Path, delay_s: float) -> None:
    """Delete a raw upload ``delay_s`` seconds from now, unless it was uploaded again since."""
    if delay_s <= 0:
        path.unlink(missing_ok=True)
        return
    seen = path.stat().st_mtime

    def later() -> None:
        try:
            if path.stat().st_mtime == seen:  # a newer identical upload resets the clock
                path.unlink()
        except FileNotFoundError:
            pass

    timer = threading.Timer(delay_s, later)
    timer.daemon = True
    timer.start()


def upload_status(res: UploadResult) -> str:
    """One line per stored file (with a volume's plane ids) and per refused file."""
    lines = []
    for image_id, header in res.headers.items():
        planes = header.get("planes") or {}
        extra = ("; planes " + ", ".join(f"{name} `{pid}`" for name, pid in planes.items())
                 if planes else "")
        lines.append(f"✅ `{image_id}` {header['summary']} — de-identified{extra}")
    lines += [f"❌ **Could not use** {e}" for e in res.errors]
    return "\n".join(lines)
