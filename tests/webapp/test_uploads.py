"""webapp.uploads: browser files into the store through the graph's own ingest."""

from __future__ import annotations

import json

import numpy as np

from tests.webapp.helpers import bare_context, png
from webapp import uploads


def _nifti(path):
    """A 24x20x6 NIfTI volume (0.8x0.8x2 mm voxels) with a bright block in the middle."""
    import nibabel as nib

    vol = np.zeros((24, 20, 6), np.int16)
    vol[8:16, 6:14, 2:4] = 300
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def test_bad_uploads_each_get_a_message_and_the_app_goes_on(tmp_path, store):
    ctx = bare_context(tmp_path, store)
    root = tmp_path / "uploads"
    root.mkdir()
    txt = root / "report.txt"
    txt.write_text("not an image")
    big = root / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 3000)
    trunc = root / "cut.dcm"
    trunc.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    good = png(root / "ok.png")
    outside = png(tmp_path / "elsewhere.png")
    res = uploads.ingest_uploads(ctx, [str(txt), str(big), str(trunc), str(good), str(outside)],
                                 max_bytes=2000, upload_root=root)
    assert len(res.image_ids) == 1 and len(res.errors) == 4
    msgs = "\n".join(res.errors)
    assert "report.txt" in msgs and "big.png" in msgs and "upload limit" in msgs
    assert "cut.dcm" in msgs and "elsewhere.png: not an uploaded file" in msgs
    assert not any(p.exists() for p in (txt, big, trunc, good))  # raw uploads deleted
    assert outside.exists()  # a file outside the upload folder is never touched
    status = uploads.upload_status(res)
    assert status.count("❌ **Could not use**") == 4 and status.count("✅") == 1


def test_raw_uploads_are_deleted_after_a_grace_period_unless_uploaded_again(tmp_path, store):
    import os
    import time

    ctx = bare_context(tmp_path, store)
    root = tmp_path / "uploads"
    root.mkdir()
    first, again = png(root / "a.png"), png(root / "b.png", value=150)
    res = uploads.ingest_uploads(ctx, [str(first), str(again)], 10**7, root, delete_after_s=0.3)
    assert len(res.image_ids) == 2 and first.exists()  # a concurrent session can still read it
    os.utime(again, (time.time() + 5, time.time() + 5))  # the same file uploaded once more
    time.sleep(0.8)
    assert not first.exists() and again.exists()


def test_several_formats_at_once_each_with_its_deidentified_header(tmp_path, store):
    from pydicom.data import get_testdata_file

    nii = _nifti(tmp_path / "brain.nii.gz")
    ct = get_testdata_file("CT_small.dcm")
    ctx = bare_context(tmp_path, store)
    res = uploads.ingest_uploads(ctx, [str(nii), ct, str(png(tmp_path / "p.png"))], 10**8)
    assert res.errors == [] and len(res.headers) == 3  # one header per file
    assert len(res.image_ids) == 6  # the volume's three planes follow it
    formats = sorted(h["source_format"] for h in res.headers.values())
    assert formats == ["dicom", "nifti", "png"]
    dicom = next(h for h in res.headers.values() if h["source_format"] == "dicom")
    assert dicom["metadata"]["modality"] == "CT"
    shown = json.dumps(res.headers)
    for phi in ("CompressedSamples", "1CT1", "20040119", "PatientName"):
        assert phi not in shown  # CT_small's patient name and ids never reach the page


def test_an_uploaded_volume_arrives_with_its_three_planes(tmp_path, store):
    """The same ingest as the graph's: the volume id, then its axial, coronal, sagittal ids."""
    from tools.ingest import ingest_path

    nii = _nifti(tmp_path / "head.nii.gz")
    res = uploads.ingest_uploads(bare_context(tmp_path, store), [str(nii)], 10**8)
    _, refs = ingest_path(store, nii)  # content ids: the graph would store the same images
    assert res.image_ids == [r.id for r in refs] and len(res.image_ids) == 4
    volume_id, *plane_ids = res.image_ids
    planes = [store.ref(i) for i in plane_ids]
    assert [p.plane for p in planes] == ["axial", "coronal", "sagittal"]
    assert all(p.volume_id == volume_id for p in planes)
    header = res.headers[volume_id]
    assert header["source_format"] == "nifti" and list(res.headers) == [volume_id]
    assert header["planes"] == {"axial": plane_ids[0], "coronal": plane_ids[1],
                                "sagittal": plane_ids[2]}
    assert [caption for _, caption in res.previews] == [
        volume_id, *(f"{i} ({p.plane} plane)" for i, p in zip(plane_ids, planes, strict=True))]
    status = uploads.upload_status(res)
    assert status.count("✅") == 1 and all(i in status for i in res.image_ids)
