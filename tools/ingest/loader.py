"""One entry point, ``load_image``: a path in, a ``LoadedImage`` out, whatever the format.

So that the CLI, the app and the agent's ingest node all read files the same way. The loader
sniffs the format and hands the file to the module that reads it:

* DICOM Part 10 (``DICM`` at byte 128): ``tools.ingest.dicom``;
* a folder: one DICOM series assembled into a volume, ``tools.ingest.series``;
* ``.nii`` / ``.nii.gz``: ``tools.ingest.nifti``;
* anything else: PNG or JPEG through Pillow, ``tools.ingest.raster``.

What comes out is safe to keep and to show a model:

* ``pixels`` are modality values (CT in Hounsfield units), every frame kept;
* ``display`` is a ``uint8`` rendering in which bright always means dense (MONOCHROME1 is
  inverted) using the file's own VOI LUT / window when it has one (``tools.ingest.windowing``);
* ``spacing_mm`` comes from the file or stays None: it is never guessed;
* ``meta`` holds a whitelist of technical attributes only (``tools.ingest.dicom_meta``).

Every failure is a named ``IngestError`` with a one-line message that names the file and the
problem (``NotAnImageError`` for files that are not images, ``UnsupportedImageError`` for real
images no installed decoder can read). Only the file's *name* is quoted, never its folder.
The hostile-input guards (``tools.ingest.guard``) sit between the steps: the file size before
reading, the DICOM preamble after sniffing, header dimensions before decoding, and every
compressed decoder (DICOM codecs, Pillow's PNG / JPEG) runs in an isolated child process with a
timeout.
"""

from __future__ import annotations

from pathlib import Path

from tools.errors import IngestError, NotAnImageError
from tools.image import LoadedImage
from tools.ingest.dicom import (
    DICOM_HEADER_BYTES,
    PREAMBLE_BYTES,
    has_dicm_prefix,
    is_bare_dicom,
    load_dicom,
)
from tools.ingest.guard import DEFAULT_DECODE_TIMEOUT_S, check_file_size, check_preamble
from tools.ingest.nifti import load_nifti
from tools.ingest.raster import load_raster
from tools.ingest.series import load_series

# ``percentile_window`` lives in ``tools.ingest.windowing``; it stays importable from here for
# the callers that have always imported it with ``load_image``.
from tools.ingest.windowing import percentile_window

__all__ = ["load_image", "percentile_window"]


def load_image(
    path: str | Path,
    *,
    allow_polyglot: bool = False,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
) -> LoadedImage:
    """Load a DICOM, PNG or JPEG file, a folder holding one DICOM series, or a NIfTI volume.

    DICOM is recognised by its ``DICM`` prefix at byte 128 (and parsed without ``force``, so
    arbitrary bytes are never read as a dataset); ``.nii`` / ``.nii.gz`` go to nibabel; anything
    else goes to Pillow, restricted to PNG and JPEG. A folder is read as one DICOM series and
    assembled into an ``(S, H, W)`` volume (see ``tools.ingest.series``).

    Hostile input is checked before it is decoded: a DICOM preamble holding an executable / ZIP
    / TIFF header is refused (``allow_polyglot=True`` loads it and records a note); absurd
    dimensions are refused from the header; compressed pixel data is decoded in a child process
    that is killed after ``decode_timeout_s`` seconds.

    Raises:
        IngestError: the file is missing, truncated or has no pixel data; subclasses in
            ``tools.ingest.guard`` name hostile cases (``SuspiciousFileError``,
            ``ImageTooLargeError``, ``InvalidDimensionsError``, ``TruncatedImageError``,
            ``DecoderCrashedError``, ``DecoderTimeoutError``).
        NotAnImageError: the file is not DICOM, PNG, JPEG or NIfTI.
        UnsupportedImageError: the pixel data needs a decoder that is not installed or fails.
    """
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{p.name}: file not found")
    if p.is_dir():
        return load_series(p, allow_polyglot=allow_polyglot, decode_timeout_s=decode_timeout_s)
    if not p.is_file():
        raise IngestError(f"{p.name}: not a regular file")
    check_file_size(p.name, p.stat().st_size)
    with p.open("rb") as fh:
        head = fh.read(DICOM_HEADER_BYTES)
    if not head:
        raise NotAnImageError(f"{p.name}: empty file")
    if has_dicm_prefix(head):
        note = check_preamble(p.name, head[:PREAMBLE_BYTES], allow_polyglot=allow_polyglot)
        img = load_dicom(p, decode_timeout_s)
        if note:
            img.notes.insert(0, note)
        return img
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return load_nifti(p)
    if is_bare_dicom(head):
        raise NotAnImageError(
            f"{p.name}: looks like DICOM without the file header (no 'DICM' prefix at byte "
            "128); medloop reads only DICOM Part 10 files: re-save it with a DICOM tool"
        )
    return load_raster(p, decode_timeout_s)
