"""tools.ingest.dicom: real DICOM files from pydicom / pydicom-data, every sample included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.encaps import encapsulate
from pydicom.uid import UID

import tools.ingest.dicom as dicom
from tests.tools.ingest.helpers import modified, no_decoding, one_line, sample
from tools.errors import IngestError, NotAnImageError, UnsupportedImageError
from tools.image import LoadedImage
from tools.ingest.guard import ImageTooLargeError, InvalidDimensionsError, TruncatedImageError
from tools.ingest.loader import load_image
from tools.store import make_ref


# ---------------------------------------------------------------------------------------------
# Real DICOM
# ---------------------------------------------------------------------------------------------
def test_chest_radiograph_monochrome1_is_inverted(chest: LoadedImage) -> None:
    # After inversion bright = dense: the mediastinum / spine column is brighter than both lung
    # fields (same band of rows, mid-chest).
    d = chest.display.astype(float)
    h, w = d.shape
    rows = slice(int(0.30 * h), int(0.60 * h))
    middle = d[rows, int(0.45 * w) : int(0.55 * w)].mean()
    lung_a = d[rows, int(0.20 * w) : int(0.35 * w)].mean()
    lung_b = d[rows, int(0.65 * w) : int(0.80 * w)].mean()
    assert middle > lung_a + 30 and middle > lung_b + 30
    # The raw pixels keep the file's orientation: there, the lungs have the higher values.
    raw = chest.pixels.astype(float)
    raw_lung = raw[rows, int(0.20 * w) : int(0.35 * w)].mean()
    assert raw_lung > raw[rows, int(0.45 * w) : int(0.55 * w)].mean()


def test_ct_in_hounsfield_units() -> None:
    img = load_image(sample("CT_small.dcm"))
    raw = pydicom.dcmread(sample("CT_small.dcm")).pixel_array
    assert img.meta["units"] == "HU" and img.meta["modality"] == "CT"
    np.testing.assert_array_equal(img.pixels, raw.astype(np.float32) - 1024)
    hu = img.pixels
    assert (hu < -800).mean() > 0.05  # lung / air present
    assert ((hu >= 0) & (hu <= 100)).mean() > 0.2  # soft tissue
    assert hu.max() < 3000  # no unrescaled raw values
    assert img.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert img.spacing_source == "PixelSpacing"


def test_head_ct_has_air_at_minus_1000() -> None:
    hu = load_image(sample("693_UNCI.dcm")).pixels
    assert (np.abs(hu + 1000) < 60).mean() > 0.1  # air around the head


def test_mr_uses_the_files_window() -> None:
    img = load_image(sample("MR_small.dcm"))  # WindowCenter 600, WindowWidth 1600
    assert img.pixels.shape == (64, 64) and img.spacing_mm == (0.3125, 0.3125)
    assert img.meta["window_center"] == 600 and img.meta["window_width"] == 1600
    assert (img.display[img.pixels >= 1400] == 255).all()
    assert (img.display[img.pixels <= -200] == 0).all()
    inside = (img.pixels > 0) & (img.pixels < 1200)
    assert np.corrcoef(img.pixels[inside], img.display[inside])[0, 1] > 0.99


def test_multiframe_keeps_frames_and_shows_the_middle_one() -> None:
    img = load_image(sample("emri_small.dcm"))
    assert img.pixels.shape == (10, 64, 64) and img.meta["frames"] == 10
    assert img.display.shape == (64, 64)
    corr = [np.corrcoef(img.display.ravel(), img.pixels[i].ravel())[0, 1] for i in range(10)]
    assert int(np.argmax(corr)) == 5 and corr[5] > 0.99
    assert make_ref("img-000000000000", img).summary.count("10 frames") == 1


def test_big_endian_gives_native_arrays_equal_to_little_endian() -> None:
    big = load_image(sample("emri_small_big_endian.dcm"))
    assert big.pixels.dtype.isnative
    np.testing.assert_array_equal(big.pixels, load_image(sample("emri_small.dcm")).pixels)


def test_ultrasound_rgb() -> None:
    img = load_image(sample("US1_UNCI.dcm"))
    assert img.pixels.shape == (480, 640, 3) and img.display.shape == (480, 640, 3)
    np.testing.assert_array_equal(img.display, img.pixels)
    assert img.meta["modality"] == "US" and img.spacing_mm is None


def test_ybr_full_is_converted_to_rgb() -> None:
    ybr = load_image(sample("SC_ybr_full_uncompressed.dcm"))
    rgb = load_image(sample("SC_rgb.dcm"))
    assert ybr.meta["photometric"] == "YBR_FULL" and ybr.pixels.shape == (100, 100, 3)
    assert np.abs(ybr.pixels.astype(int) - rgb.pixels).max() <= 8  # YCbCr rounding only


@pytest.mark.parametrize(
    ("compressed", "plain"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS via pylibjpeg-libjpeg
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),  # JPEG 2000, multi-frame
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # lossless JPEG, RGB
        ("MR_small_RLE.dcm", "MR_small.dcm"),
    ],
)
def test_lossless_compressed_dicom_decodes_exactly(compressed: str, plain: str) -> None:
    a, b = load_image(sample(compressed)), load_image(sample(plain))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.display, b.display)
    assert a.meta["transfer_syntax"] != b.meta["transfer_syntax"]


def test_jpeg2000_nuclear_medicine() -> None:
    img = load_image(sample("JPEG2000.dcm"))
    assert img.pixels.shape == (1024, 256) and img.spacing_mm == (2.26, 2.26)
    assert img.meta["transfer_syntax"] == "JPEG 2000 Image Compression"
    assert img.display.std() > 5


def test_undecodable_jpeg_names_syntax_and_package() -> None:
    # 12-bit JPEG Extended: the installed pylibjpeg / Pillow decoders cannot read it.
    with pytest.raises(UnsupportedImageError) as info:
        load_image(sample("JPEG-lossy.dcm"))
    msg = str(info.value)
    assert msg.startswith("JPEG-lossy.dcm: ") and "JPEG Extended" in msg and "gdcm" in msg
    assert "\n" not in msg


def test_unsupported_syntax_names_the_package() -> None:
    with pytest.raises(UnsupportedImageError) as info:
        load_image(sample("JPEG-lossy.dcm"))
    assert "gdcm" in one_line(info.value, "JPEG-lossy.dcm")


def test_transfer_syntax_without_any_decoder(tmp_path: Path) -> None:
    path = tmp_path / "video.dcm"
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path)
    with pytest.raises(UnsupportedImageError, match="MPEG2"):
        load_image(path)


def test_overlays_are_ignored() -> None:
    """Overlay planes (60xx,3000) are neither burned into the pixels nor read into meta."""
    path = sample("MR-SIEMENS-DICOM-WithOverlays.dcm")
    ds = pydicom.dcmread(path)
    assert (0x6000, 0x3000) in ds  # the sample really carries an overlay
    img = load_image(path)
    np.testing.assert_array_equal(img.pixels, pydicom.pixels.apply_modality_lut(ds.pixel_array, ds))
    assert not any("overlay" in k for k in img.meta)


# ---------------------------------------------------------------------------------------------
# Broken files, refused from the header before decoding
# ---------------------------------------------------------------------------------------------
def test_truncated_dicom_is_refused(tmp_path: Path) -> None:
    data = Path(sample("CT_small.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])  # inside the pixel data
    with pytest.raises(IngestError, match=r"cut\.dcm: pixel data is truncated"):
        load_image(cut)
    cut.write_bytes(data[:1000])  # inside the header: no pixel data at all
    with pytest.raises(IngestError, match="no pixel data"):
        load_image(cut)


def test_truncated_pixel_data_is_named(tmp_path: Path) -> None:
    data = Path(sample("MR_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-3000])
    with pytest.raises(TruncatedImageError) as info:
        load_image(tmp_path / "cut.dcm")
    assert "pixel data is truncated" in one_line(info.value, "cut.dcm")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no pixel data"):
        load_image(modified("CT_small.dcm", tmp_path, PixelData=None))


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
    monkeypatch.setattr(dicom, "decode_array", no_decoding)
    monkeypatch.setattr(dicom, "run_isolated", no_decoding)
    with pytest.raises(error) as info:
        load_image(path)
    assert words in one_line(info.value, "huge.dcm")


def test_uncompressed_data_decodes_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "run_isolated", no_decoding)
    assert load_image(sample("CT_small.dcm")).pixels.shape == (128, 128)


# ---------------------------------------------------------------------------------------------
# Every pydicom / pydicom-data sample: loads like pydicom reads it, or is refused by name
# ---------------------------------------------------------------------------------------------
# Files only: the DICOMDIR trees' folders are listed too, but they are not series (the files
# inside them are listed one by one); series folders are tested in test_series.py.
ALL_SAMPLES = sorted(str(p) for p in get_testdata_files() if Path(p).is_file())


# Real images that no installed decoder reads: the message must name the package that would.
UNDECODABLE = {
    # 12-bit JPEG Extended whose scan header libjpeg rejects (pydicom decodes it with GDCM).
    "JPEG-lossy.dcm": "python-gdcm",
    # A 266-byte J2K fragment for a 1024 x 256 image: OpenJPEG cannot read its header.
    "JPEG2000-embedded-sequence-delimiter.dcm": "python-gdcm",
}


# Files pydicom's own suite keeps broken on purpose, and the named error each must raise.
BROKEN = {
    "MR_truncated.dcm": TruncatedImageError,  # pixel data shorter than Rows x Columns
    "badVR.dcm": IngestError,  # Rows is "1A"
    "meta_missing_tsyntax.dcm": IngestError,  # no transfer syntax in the file meta
    "nested_priv_SQ.dcm": InvalidDimensionsError,  # pixel data without Rows / Columns
}


def _is_part10(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _expected_spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """Where the spacing must come from: an independent reading of PS3.3 C.7.6.2 / C.8.11.4."""

    def pair(value: object) -> tuple[float, float] | None:
        try:
            a, b = (float(v) for v in value)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return None
        return (a, b) if a > 0 and b > 0 else None

    if pair(ds.get("PixelSpacing")):
        return pair(ds.PixelSpacing), "PixelSpacing"
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get("PixelMeasuresSequence"):
        found = pair(shared[0].PixelMeasuresSequence[0].get("PixelSpacing"))
        if found:
            return found, "PixelMeasuresSequence.PixelSpacing"
    if pair(ds.get("ImagerPixelSpacing")):
        return pair(ds.ImagerPixelSpacing), "ImagerPixelSpacing"
    return None, None


def _assert_the_files_window(img: LoadedImage, ds: pydicom.Dataset, frame: np.ndarray) -> None:
    """The display shows the file's own VOI LUT / window as pydicom applies it (+-1 level)."""
    fallback = any("percentile window is shown" in n for n in img.notes)
    if fallback or ("VOILUTSequence" not in ds and "WindowCenter" not in ds):
        return
    lut = frame.astype(np.int64) if "VOILUTSequence" in ds else frame
    out = pydicom.pixels.apply_voi_lut(lut, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        lo, hi = (float(v) for v in pydicom.pixels.apply_windowing(np.array([-1e12, 1e12]), ds))
    shown = np.round(np.clip((out - lo) / (hi - lo), 0, 1) * 255)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 255 - shown
    assert np.abs(img.display.astype(int) - shown).max() <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: Path(p).name)
def test_every_pydicom_sample(path: str) -> None:
    """Loaded with pydicom's own pixels, photometric handling and spacing, or a named refusal.

    The oracle is plain pydicom (``pixel_array`` with its colour conversion, the modality LUT)
    run here in-process; spacing is re-derived from the attributes independently.
    """
    p = Path(path)
    if not _is_part10(p):  # JSON, dumps, bare datasets: never parsed with force=True
        with pytest.raises(NotAnImageError):
            load_image(p)
        return
    if p.name in UNDECODABLE:
        with pytest.raises(UnsupportedImageError) as info:
            load_image(p)
        assert UNDECODABLE[p.name] in str(info.value) and "\n" not in str(info.value)
        return
    if p.name in BROKEN:
        with pytest.raises(BROKEN[p.name]):
            load_image(p)
        return
    ds = pydicom.dcmread(p)
    if "PixelData" not in ds:  # SR, RT plans, DICOMDIRs, waveforms
        with pytest.raises(IngestError, match="no pixel data"):
            load_image(p)
        return

    img = load_image(p)
    photometric = str(ds.PhotometricInterpretation)
    frames = int(ds.get("NumberOfFrames") or 1)
    mine = img.pixels
    if frames > 16:  # long cine: pydicom decodes the first, middle and last frames as the oracle
        picks = [0, frames // 2, frames - 1]
        ref = np.stack([pydicom.pixels.pixel_array(ds, index=i) for i in picks])
        mine, middle = img.pixels[picks], 1
    else:
        ref, middle = ds.pixel_array, frames // 2
    # Shape: every frame kept, display is one frame of Rows x Columns.
    assert img.frames == frames and img.meta["frames"] == frames
    assert img.display.dtype == np.uint8
    assert img.display.shape[:2] == (ds.Rows, ds.Columns)
    colour = photometric == "PALETTE COLOR" or int(ds.SamplesPerPixel) == 3
    assert img.display.ndim == (3 if colour else 2)
    # Pixels: pydicom's (YBR converted to RGB, palette applied, modality LUT for grey).
    if photometric == "PALETTE COLOR":
        expected = pydicom.pixels.apply_color_lut(ref, ds)
    elif colour:
        expected = ref
    else:
        expected = pydicom.pixels.apply_modality_lut(ref, ds)
    np.testing.assert_allclose(mine, expected, rtol=1e-6)
    frame = expected[middle] if frames > 1 else expected  # the one the display shows
    if colour and frame.dtype == np.uint8:  # 8-bit RGB is shown as decoded
        np.testing.assert_array_equal(img.display, frame)
    # Photometric: bright means dense, so MONOCHROME1 is shown inverted.
    if not colour:
        lo, hi = np.percentile(frame, [25, 75])
        if hi > lo:
            dark, bright = img.display[frame <= lo].mean(), img.display[frame >= hi].mean()
            assert (dark > bright) if photometric == "MONOCHROME1" else (bright > dark)
        _assert_the_files_window(img, ds, frame)
    # Spacing: from the file's attribute, with its caveat, or unknown: never invented.
    spacing, source = _expected_spacing(ds)
    assert img.spacing_source == source
    assert img.spacing_mm == (pytest.approx(spacing) if spacing else None)
    if source == "ImagerPixelSpacing":
        assert any("magnification" in n for n in img.notes)
