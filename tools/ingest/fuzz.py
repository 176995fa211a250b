"""Fuzzing the loader: mutated real files must load or raise an ``IngestError``, never worse.

Used by ``tests/tools/ingest/test_fuzz.py`` (a short run in the normal suite) and
``bench/fuzz_ingest.py`` (>= 10,000 cases). It lives in the package, not in a test file,
because each case runs in a child process (``tools.ingest.guard.IsolatedWorker``) that
receives the probe by reference and imports it by module name.

Each case is written to a temporary file and loaded by ``load_image`` inside that probe child
(so the loader's own decoder child still runs below it, as in the app). The parent classifies
the outcome:

* ``ok``: loaded;
* the ``IngestError`` subclass name (``IngestError``, ``TruncatedImageError``, ...): refused
  with a named error (the contract);
* ``uncaught:<Type>``: any other exception escaped ``load_image`` (a bug);
* ``crash``: the probe process itself died (an in-process decoder crashed: a bug);
* ``hang``: no answer within the per-case timeout (a bug).
"""

from __future__ import annotations

import re
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.errors import IngestError
from tools.ingest.guard import DecoderCrashedError, DecoderTimeoutError, IsolatedWorker
from tools.ingest.loader import load_image

__all__ = ["BAD_OUTCOMES", "FuzzReport", "cases", "mutate", "png_bombs", "probe", "run_cases",
           "seed_files"]

BAD_OUTCOMES = ("uncaught", "crash", "hang")


def probe(path: str, decode_timeout_s: float) -> tuple[str, str]:
    """Load one file and say how it went: ``(outcome, detail)`` (runs in the child)."""
    try:
        load_image(path, decode_timeout_s=decode_timeout_s)
    except IngestError as exc:
        message = str(exc)
        if "\n" in message:
            return "uncaught:MultiLineMessage", message[:300]
        return type(exc).__name__, message[:300]
    except Exception as exc:  # the point of the probe: report what escaped the loader
        return f"uncaught:{type(exc).__name__}", " ".join(str(exc).split())[:300]
    return "ok", ""


# pydicom samples used as seeds: one per decoder path the loader has.
SEED_SAMPLES = (
    "CT_small.dcm",  # uncompressed CT, rescale to HU
    "MR_small.dcm",  # uncompressed MR, the file's window
    "SC_ybr_full_422_uncompressed.dcm",  # uncompressed YBR_FULL_422 (subsampled length)
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 lossless, 10 frames (OpenJPEG)
    "JPEG2000.dcm",  # JPEG 2000 lossy
    "MR_small_RLE.dcm",  # RLE (pylibjpeg-rle, Rust)
    "SC_rgb_rle_2frame.dcm",  # RLE RGB, 2 frames
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS (CharLS via pylibjpeg-libjpeg)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR (libjpeg)
)


def seed_files() -> dict[str, bytes]:
    """The real files mutated (``name -> bytes``; the name's suffixes pick the loader path).

    The pydicom samples in ``SEED_SAMPLES``, and files made here: an 8-bit grey PNG, a 16-bit
    PNG, a colour JPEG, and a small NIfTI volume both plain (``.nii``: mutations hit the
    header) and gzipped.
    """
    import io

    import nibabel as nib
    from PIL import Image
    from pydicom.data import get_testdata_file

    seeds: dict[str, bytes] = {}
    for name in SEED_SAMPLES:
        path = get_testdata_file(name)
        if path is not None:
            seeds[name] = Path(str(path)).read_bytes()
    rng = np.random.default_rng(7)
    grey = (np.add.outer(np.arange(96), np.arange(128)) % 256).astype(np.uint8)
    grey[20:40, 30:70] = rng.integers(0, 256, (20, 40), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    seeds["grey.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format="PNG")
    seeds["grey16.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], axis=-1)).save(buf, format="JPEG")
    seeds["photo.jpg"] = buf.getvalue()
    volume = rng.normal(0, 100, (12, 10, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("vol.nii", "vol.nii.gz"):
            nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), Path(tmp) / name)
            seeds[name] = (Path(tmp) / name).read_bytes()
    return seeds


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of ``data``: ``(kind, mutated bytes)``.

    Kinds: byte flips (anywhere, or in the first 1 KiB where headers live), truncation,
    inserted junk, a deleted chunk, a zeroed / 0xFF-filled span, a repeated chunk. Header-heavy
    mutations matter most: they change lengths, VRs and dimensions rather than pixel values.
    """
    buf = bytearray(data)
    n = len(buf)
    kind = str(rng.choice(["flip", "flip_header", "truncate", "insert", "delete", "fill",
                           "duplicate", "flip_many"]))
    if kind in ("flip", "flip_header", "flip_many"):
        count = int(rng.integers(1, 9)) if kind != "flip_many" else int(rng.integers(10, 200))
        hi = min(n, 1024) if kind == "flip_header" else n
        for pos in rng.integers(0, hi, count):
            buf[int(pos)] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        buf = buf[: int(rng.integers(0, n))]
    elif kind == "insert":
        pos = int(rng.integers(0, n))
        junk = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        buf[pos:pos] = junk
    elif kind == "delete":
        pos = int(rng.integers(0, n))
        del buf[pos : pos + int(rng.integers(1, 64))]
    elif kind == "fill":
        pos = int(rng.integers(0, n))
        length = int(rng.integers(1, 32))
        buf[pos : pos + length] = bytes([0xFF if rng.random() < 0.5 else 0x00]) * length
    else:  # duplicate
        pos = int(rng.integers(0, n))
        buf[pos:pos] = buf[pos : pos + int(rng.integers(1, 256))]
    return kind, bytes(buf)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with a correct CRC (so Pillow reads on to the part under test)."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bombs() -> dict[str, bytes]:
    """PNG decompression bombs, all with valid CRCs.

    * ``bomb-header.png``: IHDR claims 100,000 x 100,000 px, with a tiny stream;
    * ``bomb-zlib.png``: a real 10,000 x 10,000 grey image of zeros (100 MB decoded, ~100 KB
      compressed), above Pillow's default ``MAX_IMAGE_PIXELS`` (~89 M);
    * ``bomb-wide.png``: 1 x 2**31-1 px, an absurd aspect ratio.
    """
    sig = b"\x89PNG\r\n\x1a\n"

    def png(width: int, height: int, idat: bytes) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        return (sig + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                + _png_chunk(b"IEND", b""))

    comp = zlib.compressobj(9)
    row = b"\x00" * 10_001  # filter byte + 10,000 zero pixels
    body = b"".join(comp.compress(row) for _ in range(10_000)) + comp.flush()
    return {
        "bomb-header.png": png(100_000, 100_000, zlib.compress(b"\x00" * 1000)),
        "bomb-zlib.png": png(10_000, 10_000, body),
        "bomb-wide.png": png(2**31 - 1, 1, zlib.compress(b"\x00" * 1000)),
    }


def cases(seeds: dict[str, bytes], count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` mutated cases, round-robin over the seeds: ``(label, data)``.

    Labels are ``<seed file>|<mutation kind>|<index>`` so a failure can be replayed.
    """
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    for i in range(count):
        name = names[i % len(names)]
        kind, data = mutate(seeds[name], rng)
        yield f"{name}|{kind}|{i}", data


@dataclass
class FuzzReport:
    """Outcome counts, and the labels + details of every bad outcome."""

    outcomes: Counter[str] = field(default_factory=Counter)
    bad: list[tuple[str, str, str]] = field(default_factory=list)
    # For DecoderCrashedError: what happened in the decoder child ("killed by SIGSEGV",
    # "PanicException", ...), the reason in the message's parentheses.
    crash_reasons: Counter[str] = field(default_factory=Counter)
    # For the plain IngestError: the kind of problem (the message without file name and detail).
    ingest_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Cases run."""
        return sum(self.outcomes.values())

    def merge(self, other: FuzzReport) -> None:
        """Add another report's counts and failures to this one."""
        self.outcomes.update(other.outcomes)
        self.bad.extend(other.bad)
        self.crash_reasons.update(other.crash_reasons)
        self.ingest_reasons.update(other.ingest_reasons)


def run_cases(items: Iterable[tuple[str, bytes]], *, case_timeout_s: float = 20.0,
              decode_timeout_s: float = 5.0) -> FuzzReport:
    """Run cases one after another in one reused probe child; see the module docstring.

    ``decode_timeout_s`` (the loader's own decoder limit) is kept below ``case_timeout_s`` so
    that a codec hang is reported by the loader as ``DecoderTimeoutError``, and only a hang
    outside any isolation shows up as ``hang``.
    """
    report = FuzzReport()
    worker = IsolatedWorker(daemon=False)
    try:
        with tempfile.TemporaryDirectory(prefix="medloop-fuzz-") as tmp:
            for label, data in items:
                suffix = "".join(Path(label.split("|")[0]).suffixes) or ".bin"  # .nii.gz
                path = Path(tmp) / f"case{suffix}"
                path.write_bytes(data)
                try:
                    outcome, detail = worker.call(label, probe, (str(path), decode_timeout_s),
                                                  case_timeout_s)
                except DecoderTimeoutError as exc:
                    outcome, detail = "hang", str(exc)
                except DecoderCrashedError as exc:
                    outcome, detail = "crash", str(exc)
                report.outcomes[outcome] += 1
                if outcome == "DecoderCrashedError":
                    report.crash_reasons[_crash_reason(detail)] += 1
                elif outcome == "IngestError":
                    report.ingest_reasons[_problem(detail)] += 1
                if outcome.startswith(BAD_OUTCOMES):
                    report.bad.append((label, outcome, detail))
    finally:
        worker.close()
    return report


def _crash_reason(message: str) -> str:
    """``killed by SIGSEGV`` / the exception type, from a ``DecoderCrashedError`` message."""
    match = re.search(r"decoder (?:crashed|failed) \(([^):]+)", message)
    return match.group(1) if match else "other"


def _problem(message: str) -> str:
    """The kind of problem in an ``IngestError`` message: ``name: problem (detail)`` -> problem.

    Numbers are masked so that messages differing only in counts fall together.
    """
    text = message.split(": ", 1)[1] if ": " in message else message
    text = text.split(" (", 1)[0].split(";", 1)[0]
    return re.sub(r"\d+", "N", text)[:80]
