"""PACS in and out: find and fetch a study over DICOMweb or DIMSE, store results back.

``config`` (``PacsConfig``: URL, credentials, TLS, time limits, study size limits), ``study``
(what a search lists, the fetch budget), ``dicomweb`` (QIDO-RS / WADO-RS / STOW-RS over
dicomweb-client and a streaming multipart reader, ``multipart``), ``dimse`` (C-FIND / C-GET /
C-STORE over pynetdicom), ``fetch`` (a study into a private folder, then through
``tools.ingest.ingest_path`` like any file; results back), ``errors`` (one named error per way
a PACS fails). A study fetched here gets the same guards and de-identification as a file: the
raw files live only in a private temporary folder until they are ingested.

Above ``tools.ingest`` in the layers; nothing else in ``tools`` imports it.
"""

from __future__ import annotations

from tools.pacs.config import PacsConfig, load_pacs_config
from tools.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
    StudyNotFoundError,
    StudyTooLargeError,
)

__all__ = [
    "PacsAuthError",
    "PacsConfig",
    "PacsError",
    "PacsTimeoutError",
    "PacsUnavailableError",
    "StudyNotFoundError",
    "StudyTooLargeError",
    "load_pacs_config",
]
