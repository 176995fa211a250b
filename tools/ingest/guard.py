"""Checks that keep hostile or broken files from hurting the process that loads them.

Three guards, each cheap and each run before the expensive or dangerous step it protects:

* ``check_preamble``: the 128-byte DICOM preamble is free for the writer to fill, so a file can
  be a valid DICOM *and* a Windows/Linux/macOS executable, a script or a ZIP at the same time
  (CVE-2019-11687). Such polyglots are refused unless the caller opts in.
* ``check_dimensions``: Rows x Columns x Frames x Samples is read from the header and refused
  when zero or absurd, *before* a decoder allocates anything.
* ``IsolatedWorker``: compressed pixel data is decoded in a reused child process (a fresh
  interpreter) with a timeout, so a segfault or an endless loop in a C codec becomes a named
  ``IngestError`` instead of taking the app down.

The errors here subclass ``IngestError``: every message is one line naming the file and the
problem, and the CLI / app show it as is.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tools.errors import IngestError

__all__ = [
    "MAX_PIXELS",
    "DecoderCrashedError",
    "DecoderTimeoutError",
    "ImageTooLargeError",
    "InvalidDimensionsError",
    "IsolatedWorker",
    "SuspiciousFileError",
    "TruncatedImageError",
    "check_dimensions",
    "check_file_size",
    "check_preamble",
    "run_isolated",
    "stop_worker",
]

# 2**28 pixels (268 M; 512 MiB at 16 bits) is far above any real CT volume file, whole-slide
# images aside (which medloop does not read), and low enough that one file cannot exhaust memory.
MAX_PIXELS = 2**28

# No file medloop reads can legitimately be larger: MAX_PIXELS samples at 8 bytes (float64).
# Checked from the file size before any parsing, so a multi-GB file is never read into memory.
MAX_FILE_BYTES = MAX_PIXELS * 8


def check_file_size(name: str, size: int) -> None:
    """Refuse a file larger than ``MAX_FILE_BYTES`` (bytes) before it is read.

    Raises:
        ImageTooLargeError: ``size`` exceeds the limit.
    """
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"{name}: file is too large to load safely ({size} bytes, "
                                 f"limit {MAX_FILE_BYTES})")


# Default seconds a compressed image may take to decode in the child. The largest real files
# decode in well under a second here; a minute-long decode is a hang, not a big image.
DEFAULT_DECODE_TIMEOUT_S = 30.0


class SuspiciousFileError(IngestError):
    """The file looks like something else as well as an image (an executable polyglot)."""


class ImageTooLargeError(IngestError):
    """The header declares more pixels than medloop will decode (or a decompression bomb)."""


class InvalidDimensionsError(IngestError):
    """The header declares zero, negative or inconsistent dimensions."""


class TruncatedImageError(IngestError):
    """The pixel data is shorter than the header says."""


class DecoderCrashedError(IngestError):
    """The codec died (segfault, abort, out of memory) while decoding the pixel data."""


class DecoderTimeoutError(IngestError):
    """The codec did not finish within its time limit and was killed."""


# Magic numbers of things that must not hide in a DICOM preamble (checked in this order).
_PREAMBLE_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x7fELF", "a Linux ELF executable header"),
    (b"\xfe\xed\xfa\xce", "a Mach-O executable header"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable header"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable header"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable header"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary header"),
    (b"PK\x03\x04", "a ZIP archive header"),
    (b"PK\x05\x06", "a ZIP archive header"),
    (b"MZ", "a Windows PE executable header (MZ)"),
    (b"#!", "a script (#!) header"),
)
# A TIFF header is explicitly allowed there (dual-personality DICOM/TIFF files; pydicom's own
# CT_small.dcm and MR_small.dcm are such files), so it is flagged in a note, not refused.
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")


def check_preamble(name: str, preamble: bytes, *, allow_polyglot: bool = False) -> str | None:
    """Refuse (or describe) a DICOM preamble that holds another format's header.

    Args:
        name: the file name for the message (never its folder).
        preamble: the first 128 bytes of the file.
        allow_polyglot: load anyway; the caller records the returned note.

    Returns:
        None for a clean preamble, else a one-line note saying what was found: always for a
        TIFF header (a dual-personality file the standard allows), and for the refused kinds
        when ``allow_polyglot`` is set.

    Raises:
        SuspiciousFileError: the preamble starts with an executable, script or ZIP header.
    """
    if preamble.startswith(_TIFF_MAGICS):
        return ("the DICOM preamble holds a TIFF header (a dual-personality DICOM/TIFF file); "
                "only the DICOM content was read")
    for magic, what in _PREAMBLE_MAGICS:
        if preamble.startswith(magic):
            if not allow_polyglot:
                raise SuspiciousFileError(
                    f"{name}: the DICOM preamble holds {what}: the file is also another "
                    "format (a polyglot, CVE-2019-11687) and was refused; load it with "
                    "allow_polyglot=True only if its source is trusted"
                )
            return (f"the DICOM preamble holds {what} (a polyglot file, CVE-2019-11687); "
                    "loaded because allow_polyglot=True")
    return None


def check_dimensions(
    name: str, rows: int | None, columns: int | None, frames: int = 1, samples: int = 1,
    *, max_pixels: int = MAX_PIXELS,
) -> int:
    """Validate header dimensions before any pixel is decoded; returns the sample count.

    Units: counts of pixels (rows, columns), frames or slices, and samples per pixel.

    Raises:
        InvalidDimensionsError: a dimension is missing, zero or negative.
        ImageTooLargeError: rows x columns x frames x samples exceeds ``max_pixels``.
    """
    dims = {"Rows": rows, "Columns": columns, "frames": frames, "samples per pixel": samples}
    bad = [f"{k} {v}" for k, v in dims.items() if v is None or v <= 0]
    if bad:
        raise InvalidDimensionsError(f"{name}: invalid image dimensions ({', '.join(bad)})")
    assert rows is not None and columns is not None  # for mypy: checked just above
    total = rows * columns * frames * samples
    if total > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is too large to load safely ({frames} x {rows} x {columns} x "
            f"{samples} = {total} samples, limit {max_pixels})"
        )
    return total


# =============================================================================================
# Decoding in a child process
# =============================================================================================
T = TypeVar("T")


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Child loop: run ``(func, args)`` requests until the pipe closes.

    ``IngestError`` travels back as itself (it pickles with its message); any other exception
    is sent as its type name and message, and the parent wraps it in an ``IngestError``.

    The child's stderr (file descriptor 2) goes to /dev/null: codecs write there directly
    (pylibjpeg-rle prints Rust panic messages, libjpeg warnings), which would break the
    one-line error contract of the CLI; what matters comes back through the pipe.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    while True:
        try:
            func, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", func(*args))
        except IngestError as exc:
            reply = ("ingest", exc)
        except BaseException as exc:  # reported to the parent, which raises a named error
            reply = ("error", type(exc).__name__, " ".join(str(exc).split())[:200])
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result: say so rather than die silently
            conn.send(("error", type(exc).__name__, " ".join(str(exc).split())[:200]))


def _child_main(fd: int) -> None:
    """Entry point of the decoder child: serve requests on the inherited socket ``fd``."""
    _serve(multiprocessing.connection.Connection(fd))


class IsolatedWorker:
    """One reused child process that runs functions with a timeout.

    Why a hand-made worker and not ``ProcessPoolExecutor``: a hung task must be *killed*, and
    the executor cannot kill one task's process; here the child is killed and a fresh one
    started on the next call. Each later call costs the pickling of its arguments and result
    (a few ms for typical images); starting the child costs ~0.3 s once.

    Why ``subprocess`` and not ``multiprocessing``'s ``spawn``: a spawned child re-imports the
    parent's ``__main__``, so a user's script that embeds medloop without an
    ``if __name__ == "__main__":`` guard would fail (or run twice) on its first DICOM. The child
    here is a fresh interpreter that imports only this module; requests travel over a socket
    pair as pickles, functions by reference (so they must be importable module-level names).
    The child exits by itself when the parent's end of the socket closes.

    Thread-safe: calls are serialised (one decode at a time per worker).

    Args:
        daemon: kept for callers that ask for a child that may start children of its own (the
            fuzz harness runs whole loads in one); every child here may, so it changes nothing.
    """

    def __init__(self, daemon: bool = True) -> None:
        self._daemon = daemon
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._lock = threading.Lock()

    def call(self, name: str, func: Callable[..., T], args: tuple[Any, ...],
             timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> T:
        """Run ``func(*args)`` in the child and return its result.

        ``func`` must be a module-level function (it is pickled by reference).

        Raises:
            DecoderTimeoutError: no answer within ``timeout_s`` seconds (the child is killed).
            DecoderCrashedError: the child died, or ``func`` raised a non-``IngestError``.
            IngestError: whatever ``IngestError`` ``func`` raised, unchanged.
        """
        with self._lock:
            conn = self._ensure()
            try:
                conn.send((func, args))
                ready = conn.poll(timeout_s)
            except (BrokenPipeError, EOFError, OSError):
                ready = True  # the child is gone: recv below reports it
            if not ready:
                self._stop()
                raise DecoderTimeoutError(
                    f"{name}: decoder timed out after {timeout_s:g} s and was stopped"
                )
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                code = self._stop()
                raise DecoderCrashedError(
                    f"{name}: decoder crashed ({_describe_exit(code)}); "
                    "the file's compressed pixel data is probably corrupt"
                ) from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "ingest":
            raise reply[1]
        raise DecoderCrashedError(f"{name}: decoder failed ({reply[1]}: {reply[2]})")

    def _ensure(self) -> multiprocessing.connection.Connection:
        """The connection to a live child, starting one if needed."""
        if self._proc is None or self._proc.poll() is not None or self._conn is None:
            self._stop()
            ours, theirs = socket.socketpair()
            # The child finds medloop (and any test module a function comes from) on the
            # parent's import path, whether medloop is installed or run from a source tree.
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c",
                     f"from tools.ingest.guard import _child_main; _child_main({theirs.fileno()})"],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, env=env,
                )
            finally:
                theirs.close()
            self._conn = multiprocessing.connection.Connection(ours.detach())
        return self._conn

    def _stop(self) -> int | None:
        """Kill the child (if any) and return its exit code (negative: killed by a signal)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()  # a healthy child sees EOF and exits by itself
        if proc is None:
            return None
        try:
            return proc.wait(0.5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def close(self) -> None:
        """Stop the child; the next call starts a fresh one."""
        with self._lock:
            self._stop()


def _describe_exit(code: int | None) -> str:
    """A child's exit code in words (negative = killed by that signal)."""
    if code is None:
        return "no exit code"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_WORKER: IsolatedWorker | None = None
_WORKER_LOCK = threading.Lock()


def run_isolated(name: str, func: Callable[..., T], args: tuple[Any, ...],
                 timeout_s: float = DEFAULT_DECODE_TIMEOUT_S) -> T:
    """Run ``func(*args)`` in the shared decoder child process (see ``IsolatedWorker.call``).

    A daemonic process may not start children; there (e.g. inside a ``multiprocessing.Pool``
    worker) the function runs in-process, without isolation.
    """
    global _WORKER
    if multiprocessing.current_process().daemon:
        return func(*args)
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = IsolatedWorker()
            atexit.register(_WORKER.close)
        worker = _WORKER
    return worker.call(name, func, args, timeout_s)


def stop_worker() -> bool:
    """Stop the shared decoder child of ``run_isolated``; whether one was running.

    The next ``run_isolated`` call starts a fresh child. For measurements: a child's peak
    memory shows in ``resource.getrusage(RUSAGE_CHILDREN)`` only once it has exited.
    """
    with _WORKER_LOCK:
        worker = _WORKER
    if worker is None or worker._proc is None:
        return False
    worker.close()
    return True
