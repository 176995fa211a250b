"""Shared helpers for the ingest tests: pydicom samples, series folders, broken decoders.

The broken decoders are module-level functions here because the decoder child receives them by
reference (pickled by name) when a test puts them in place of the real one.
"""

from __future__ import annotations

import ctypes
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# Every key the loader may put in meta: a whitelist, so a new key has to be added on purpose.
ALLOWED_META = {
    "modality", "body_part", "body_part_from", "view_position", "laterality", "patient_orientation",
    "photometric", "rows", "columns", "frames", "samples_per_pixel", "bits_allocated",
    "bits_stored", "pixel_representation", "pixel_spacing", "imager_pixel_spacing",
    "slice_thickness", "window_center", "window_width", "rescale_slope", "rescale_intercept",
    "transfer_syntax", "units", "slice_spacing_mm", "slice_orientation", "orientation",
    # planes cut from a volume (tools.planes.volume_plane, ImageStore.put_plane)
    "plane", "slice_index", "planes_total", "volume_id",
}


def sample(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom sample {name} missing"
    return str(path)


def modified(name: str, tmp_path: Path, **changes: object) -> Path:
    """A copy of a sample with some attributes set (None deletes), saved under tmp_path."""
    ds = pydicom.dcmread(sample(name))
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = tmp_path / f"modified-{name}"
    ds.save_as(out, enforce_file_format=True)
    return out


def one_line(exc: BaseException, name: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(f"{name}: "), msg
    return msg


# ---------------------------------------------------------------------------------------------
# DICOM series folders
# ---------------------------------------------------------------------------------------------
CT = get_testdata_file("CT_small.dcm")
assert CT is not None


def write_series(
    folder: Path,
    positions_mm: list[float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    series_uid: str | None = None,
    seed: int = 0,
    prefix: str = "",
) -> list[int]:
    """Copies of CT_small, one per position along the slice normal, in shuffled file order.

    Slice k (in position order) has raw pixels + 10*k, so the order is readable from the values.
    Returns the file order used (slice index per file).
    """
    folder.mkdir(exist_ok=True)
    base = pydicom.dcmread(CT)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    origin = np.array([-158.1, -179.0, 0.0])
    uid = series_uid or generate_uid()
    order = list(range(len(positions_mm)))
    random.Random(seed).shuffle(order)
    for file_index, k in enumerate(order):
        ds = pydicom.dcmread(CT)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = len(order) - k  # deliberately reversed: must not drive the order
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + positions_mm[k] * normal]
        ds.PixelData = (base.pixel_array + 10 * k).astype(np.int16).tobytes()
        ds.save_as(folder / f"{prefix}{file_index:03d}.dcm")
    return order


def raw_hu() -> np.ndarray:
    return pydicom.dcmread(CT).pixel_array.astype(np.float32) - 1024


POSITIONS = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]  # 2.5 mm apart


def rle_series(folder: Path, count: int = 3) -> None:
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


# ---------------------------------------------------------------------------------------------
# Decoders that crash, hang or fail, put in place of the real one
# ---------------------------------------------------------------------------------------------
# Module-level so that the spawn child can import them by name (they replace the decoder).
def segfault_decode(name: str, ds: Any, tsuid: Any) -> Any:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a broken C codec would


def hang_decode(name: str, ds: Any, tsuid: Any) -> Any:
    time.sleep(60)


def raise_os_error(name: str, ds: Any, tsuid: Any) -> Any:
    raise OSError("codec said no")


def abort_decode(name: str, ds: Any, tsuid: Any) -> Any:
    import os

    os.abort()  # SIGABRT, as a codec's failed assertion would


def segfault(*args: object) -> None:
    ctypes.string_at(0)


def no_decoding(*args: object) -> None:
    raise AssertionError("decoder called for an image that should be refused from its header")
