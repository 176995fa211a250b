"""A streaming ``multipart/related`` reader: each part's bytes straight into a file.

WADO-RS answers a retrieve with one ``multipart/related`` body holding every instance. Reading
it whole (what dicomweb-client's ``retrieve_*`` do, parsing each part with pydicom) would hold
the whole study in memory and parse untrusted files in this process before the ingest guards
have looked at them. Here the body is cut into parts as it arrives, each part's bytes are
written to its own file untouched (a DICOM preamble included, so ``tools.ingest.guard`` sees the
file exactly as the PACS stored it), and only the trailing few bytes that might begin the next
boundary are held back. The caller's ``FetchBudget`` counts every byte and part as they come.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import BinaryIO

from tools.pacs.errors import PacsError
from tools.pacs.study import FetchBudget

__all__ = ["boundary_of", "split_parts"]

_MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` Content-Type header.

    Raises:
        PacsError: not multipart, or no boundary (the PACS answered something else).
    """
    if not content_type.lower().startswith("multipart/"):
        raise PacsError(f"the PACS answered {content_type.split(';')[0] or 'no content type'}, "
                        "not multipart/related DICOM")
    m = _BOUNDARY.search(content_type)
    if not m:
        raise PacsError("the PACS answered multipart without a boundary")
    return (m.group(1) or m.group(2)).encode("latin-1")


def split_parts(chunks: Iterable[bytes], boundary: bytes, open_part: Callable[[], BinaryIO],
                budget: FetchBudget) -> int:
    """Write each part of the body ``chunks`` to a file from ``open_part()``; the part count.

    ``open_part`` is called once per part and its file is closed here. ``budget`` counts the
    bytes received and the parts (instances) started, and raises when either is over its limit
    or the deadline has passed.

    Raises:
        PacsError: the body is not well-formed multipart (a part's headers never end, or the
            body ends inside a part).
        StudyTooLargeError, PacsTimeoutError: from ``budget``.
    """
    splitter = _Splitter(boundary, open_part, budget)
    try:
        for chunk in chunks:
            if chunk:
                budget.add_bytes(len(chunk))
                if splitter.feed(chunk):
                    return splitter.parts
        if splitter.state == "body" or (splitter.state == "after" and not splitter.parts):
            raise PacsError("the PACS's multipart answer ended in the middle of a part")
        return splitter.parts
    finally:
        splitter.close()


class _Splitter:
    """The parser's state between chunks: what it is reading and the bytes it holds back."""

    def __init__(self, boundary: bytes, open_part: Callable[[], BinaryIO],
                 budget: FetchBudget) -> None:
        self.delim = b"--" + boundary
        self.body_delim = b"\r\n" + self.delim
        self.open_part = open_part
        self.budget = budget
        self.buf = b""
        self.state = "preamble"
        self.out: BinaryIO | None = None
        self.parts = 0

    def feed(self, chunk: bytes) -> bool:
        """Take one chunk; True once the closing delimiter has been read."""
        self.buf += chunk
        steps = {"preamble": self._preamble, "after": self._after, "headers": self._headers,
                 "body": self._body}
        while True:
            more = steps[self.state]()
            if self.state == "done":
                return True
            if not more:
                return False

    def close(self) -> None:
        """Close a part file left open (the body ended early or a limit was hit)."""
        if self.out is not None:
            self.out.close()
            self.out = None

    # Each step consumes what it can and returns whether another step may proceed now.
    def _preamble(self) -> bool:
        i = self.buf.find(self.delim)
        if i < 0:
            self.buf = self.buf[-(len(self.delim) - 1):]
            return False
        self.buf, self.state = self.buf[i + len(self.delim):], "after"
        return True

    def _after(self) -> bool:
        if len(self.buf) < 2:
            return False
        if self.buf.startswith(b"--"):  # the closing delimiter: what follows is epilogue
            self.state = "done"
            return False
        i = self.buf.find(b"\r\n")
        if i < 0:
            return False
        self.buf, self.state = self.buf[i + 2:], "headers"
        return True

    def _headers(self) -> bool:
        if self.buf.startswith(b"\r\n"):  # a part with no headers
            end = 2
        else:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > _MAX_HEADER_BYTES:
                    raise PacsError("the PACS sent a multipart part whose headers never end")
                return False
            end = i + 4
        self.buf, self.state = self.buf[end:], "body"
        self.budget.add_instance()
        self.out = self.open_part()
        self.parts += 1
        return True

    def _body(self) -> bool:
        assert self.out is not None
        i = self.buf.find(self.body_delim)
        if i < 0:
            keep = len(self.body_delim) - 1
            if len(self.buf) > keep:
                self.out.write(self.buf[:-keep])
                self.buf = self.buf[-keep:]
            return False
        self.out.write(self.buf[:i])
        self.close()
        self.buf, self.state = self.buf[i + len(self.body_delim):], "after"
        return True
