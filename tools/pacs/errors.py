"""What can go wrong between medloop and a PACS, each as one line that names the problem.

Every network call to a PACS has a time limit; when one is hit, or the PACS refuses, the caller
gets one of these rather than a hang or a library's traceback. Messages name the PACS by host
and port only: never a password, a token or a patient.
"""

from __future__ import annotations

from tools.errors import MedloopError

__all__ = [
    "PacsAuthError",
    "PacsError",
    "PacsTimeoutError",
    "PacsUnavailableError",
    "StudyNotFoundError",
    "StudyTooLargeError",
]


class PacsError(MedloopError):
    """The PACS could not be used for this request (the message says why)."""


class PacsUnavailableError(PacsError):
    """The PACS cannot be reached: connection refused, unknown host, TLS failure."""


class PacsTimeoutError(PacsError):
    """The PACS did not answer (or finish sending) within the configured time limit."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials or the AE title (HTTP 401 / 403, association rejected)."""


class StudyNotFoundError(PacsError):
    """No study with that Study Instance UID on the PACS (or none this user may see)."""


class StudyTooLargeError(PacsError):
    """The study has more instances or bytes than the configured limit allows fetching."""
