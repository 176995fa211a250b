"""The ``image`` argument of medloop's MCP tools: one image by id, path, base64 or PACS study.

An MCP host has no access to medloop's image store, so where a tool takes ``image_id`` its MCP
form takes ``image``, exactly one of:

* ``{"id": "img-..."}``: an image this server already stored (a result's ``new_image_ids``,
  an image an earlier call sent);
* ``{"path": "/data/chest.dcm"}``: a file or DICOM series folder on the server's machine.
  Over stdio (the host started the server: it is the user's own process) any path; over HTTP
  only paths under the folders the server was started with (``--path-root``), and none by
  default: a remote caller must not read the server's disk;
* ``{"base64": "...", "filename": "ct.nii.gz"}``: the file's bytes (DICOM, PNG, JPEG, NIfTI);
  ``filename`` is optional and only its suffix is used (NIfTI is known by it);
* ``{"pacs": {"study_uid": "1.2.3", "url": "https://pacs/dicom-web"}}``: a study fetched from
  the PACS (``tools.pacs``); ``url`` may be left out for the configured PACS, and over HTTP may
  only name that one (the server's PACS credentials never go to a caller's address).

Every way ends in ``tools.ingest.ingest_path`` (or the PACS fetch, which ends there too), so the
same hostile-input guards and de-identification apply as to any file.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.llm.text_protocol import inline_refs
from tools.errors import ToolInputError
from tools.image import ImageRef
from tools.ingest import ingest_path
from tools.store import ImageStore

__all__ = ["MAX_BASE64_BYTES", "ImageInput", "ImageResolver", "PacsRef", "image_schema"]

MAX_BASE64_BYTES = 512 * 1024 * 1024
"""The largest decoded ``base64`` image accepted (the ingest guards then check the file)."""

_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg")


class PacsRef(BaseModel):
    """A study on a PACS."""

    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(description="the Study Instance UID, e.g. '1.2.840.113619.2.55.3'")
    url: str | None = Field(default=None, description="the PACS (http(s)://host/dicom-web or "
                                                       "dicom://AET@host:port); default: the "
                                                       "server's configured PACS")


class ImageInput(BaseModel):
    """One image, given exactly one way."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="an image this server already stored, "
                                                     "e.g. 'img-1a2b3c4d5e6f'")
    path: str | None = Field(default=None, description="a file or DICOM series folder on the "
                                                       "server's machine")
    base64: str | None = Field(default=None, description="the file's bytes, base64 (DICOM, "
                                                         "PNG, JPEG, NIfTI)")
    filename: str | None = Field(default=None, description="with base64: the file's name, for "
                                                           "its suffix (e.g. 'ct.nii.gz')")
    pacs: PacsRef | None = Field(default=None, description="a study on the PACS")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        given = [k for k in ("id", "path", "base64", "pacs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give the image exactly one way: 'id', 'path', 'base64' or 'pacs'"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.filename is not None and self.base64 is None:
            raise ValueError("'filename' goes with 'base64'")
        return self


def image_schema(description: str) -> dict[str, Any]:
    """The JSON schema of an ``image`` argument, references inlined (for any MCP host)."""
    schema = inline_refs(ImageInput.model_json_schema())
    schema.pop("title", None)
    schema["description"] = description
    schema["minProperties"] = 1
    return schema


class ImageResolver:
    """Turns ``image`` arguments into ids in the server's store.

    Args:
        store: the store the tools and the agent read.
        path_roots: folders a ``path`` may be under; None accepts any path.
        pacs: ``pacs(url)`` gives the PACS settings for ``url`` (None: the configured PACS),
            or None when none is configured (``AgentContext.pacs``).
        open_pacs: whether a ``pacs.url`` other than the configured PACS's is accepted.
    """

    def __init__(self, store: ImageStore, *, path_roots: Sequence[Path] | None = None,
                 pacs: Callable[[str | None], Any] | None = None, open_pacs: bool = False) -> None:
        self.store = store
        self.path_roots = None if path_roots is None else [p.resolve() for p in path_roots]
        self.pacs = pacs
        self.open_pacs = open_pacs

    def refs(self, value: Any) -> list[ImageRef]:
        """The stored refs for one ``image`` argument, the image first.

        A volume's planes and a study's other images follow it.

        Raises:
            ToolInputError: a malformed argument, an unknown id, a path outside the roots, bad
                base64, a PACS reference that cannot be used.
            IngestError: the file or study is not an image medloop reads.
        """
        from pydantic import ValidationError

        try:
            image = ImageInput.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'image'}: {e['msg']}"
                                 for e in exc.errors())
            raise ToolInputError(f"bad image: {problems}") from None
        if image.id is not None:
            if image.id not in self.store:
                raise ToolInputError(f"unknown image id {image.id!r}: send the image by 'path' "
                                     "or 'base64' first")
            return [self.store.ref(image.id)]
        if image.path is not None:
            return ingest_path(self.store, self._allowed(image.path))[1]
        if image.base64 is not None:
            return self._from_base64(image.base64, image.filename)
        assert image.pacs is not None
        return self._from_pacs(image.pacs)

    def _allowed(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        if self.path_roots is None:
            return path
        if not self.path_roots:
            raise ToolInputError("this server takes no paths (it serves over HTTP): send the "
                                 "image as 'base64', or start it with --path-root FOLDER")
        real = path.resolve()
        if not any(real == root or root in real.parents for root in self.path_roots):
            raise ToolInputError(f"path {path.name!r} is outside the folders this server reads "
                                 f"({', '.join(str(r) for r in self.path_roots)})")
        return real

    def _from_base64(self, data: str, filename: str | None) -> list[ImageRef]:
        if len(data) > MAX_BASE64_BYTES * 4 // 3 + 4:
            raise ToolInputError(f"the image is over {MAX_BASE64_BYTES // 2**20} MB")
        try:
            raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        except (binascii.Error, ValueError):
            raise ToolInputError("image.base64 is not valid base64") from None
        if not raw:
            raise ToolInputError("image.base64 is empty")
        name = (filename or "").lower()
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
        with tempfile.TemporaryDirectory(prefix="medloop-mcp-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(raw)
            return ingest_path(self.store, path)[1]

    def _from_pacs(self, ref: PacsRef) -> list[ImageRef]:
        if self.pacs is None:
            raise ToolInputError("this server has no PACS configured (MEDLOOP_PACS_URL)")
        try:
            configured = self.pacs(None)
        except ValueError as exc:
            raise ToolInputError(f"the server's PACS settings are unusable: {exc}") from None
        url = ref.url
        if url and configured is not None and url.rstrip("/") == configured.url.rstrip("/"):
            url = None
        if url and not self.open_pacs:
            raise ToolInputError("this server fetches only from its configured PACS: leave "
                                 "out 'url'")
        try:
            config = self.pacs(url) if url else configured
        except ValueError as exc:
            raise ToolInputError(f"bad PACS url: {exc}") from None
        if config is None:
            raise ToolInputError("this server has no PACS configured: give pacs.url")
        from tools.pacs.fetch import fetched_study, ingest_study

        try:
            with fetched_study(config, ref.study_uid) as study:
                stored = ingest_study(self.store, study)
        except ValueError as exc:  # a malformed UID
            raise ToolInputError(str(exc)) from None
        if not stored.image_ids:
            detail = "; ".join(stored.errors[:3]) or "no images in it"
            raise ToolInputError(f"study {ref.study_uid} gave no usable image: {detail}")
        return [self.store.ref(i) for i in stored.image_ids]
