"""The two error tiers every tool and loader uses.

``ToolInputError`` is *retryable*: the model passed something wrong (an unknown image id, a box
outside the image). The agent hands its message back to the model so it can try again.

``OutsideDomain`` is a ``ToolInputError`` that no other arguments mend: the image is outside
what the tool was validated on (``tools.domain``). The model is told to use another tool, not to
fix its arguments.

``ResourceNotReady`` is *retryable later*: what the tool needs exists but is not ready yet (the
case library still being built in the background). The model is told to use other tools now,
not that its arguments were wrong.

``IngestError`` and ``ToolFailure`` are *terminal* for that input: the file is not an image, a
model's weights are missing. They carry a one-line message that names the problem, which the CLI
prints (exit 2) and the app shows; the agent records them as failed evidence, never as results.
"""

from __future__ import annotations


class MedloopError(Exception):
    """Base of every error medloop raises on purpose."""


class ToolInputError(MedloopError, ValueError):
    """The caller (usually the LLM) gave arguments the tool cannot use; it may retry."""


class OutsideDomain(ToolInputError):
    """The image is outside the kinds of image the tool was validated on; ``reason`` says how.

    Another call of the same tool on the same image will be refused again.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ResourceNotReady(MedloopError, RuntimeError):
    """What the tool needs is still being prepared (e.g. a library building); try later."""


class ToolFailure(MedloopError, RuntimeError):
    """A tool could not do its work for a reason the caller cannot fix by retrying."""


class IngestError(MedloopError, ValueError):
    """An input file could not be loaded as an image. The message names the problem."""


class NotAnImageError(IngestError):
    """The file is not a format medloop reads (DICOM, PNG, JPEG)."""


class UnsupportedImageError(IngestError):
    """A real image that medloop cannot decode here (codec or layout not supported)."""
