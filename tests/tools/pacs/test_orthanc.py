"""Find, fetch and ingest studies from a real Orthanc, over DICOMweb and over DIMSE.

One Orthanc for the module (``tests.orthanc``: free loopback ports, password authentication,
stopped and deleted afterwards), loaded with pydicom's CT_small.dcm, a study mixing a CT with a
polyglot and a huge-header file, and a study holding the polyglot alone.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.orthanc import (
    CT_STUDY,
    HOSTILE_STUDY,
    MIXED_STUDY,
    NEEDS_ORTHANC,
    orthanc,  # noqa: F401 - the module's server fixture
)
from tools.ingest.loader import load_image
from tools.pacs.config import PacsConfig
from tools.pacs.errors import PacsAuthError, StudyNotFoundError, StudyTooLargeError
from tools.pacs.fetch import fetch_study, fetched_study, find_studies, ingest_study, store_results

pytestmark = NEEDS_ORTHANC
CT = get_testdata_file("CT_small.dcm")


@pytest.fixture(params=["dicomweb", "dimse"])
def pacs(request, orthanc):  # noqa: F811 - the fixture above
    if request.param == "dicomweb":
        return PacsConfig(url=orthanc.dicomweb_url, user=orthanc.user,
                          password=orthanc.password, read_timeout_s=20)
    return PacsConfig(url=orthanc.dimse_url, read_timeout_s=20)


def leftovers() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("medloop-pacs-*"))


def test_find_lists_studies_without_patients(pacs):
    found = {s.study_uid: s for s in find_studies(pacs)}
    assert set(found) >= {CT_STUDY, MIXED_STUDY, HOSTILE_STUDY}
    ct = found[CT_STUDY]
    assert (ct.date, ct.modalities, ct.n_instances) == ("2004-01-19", ("CT",), 1)
    assert found[MIXED_STUDY].n_instances == 3
    assert "CompressedSamples" not in repr(ct) and "1CT1" not in repr(ct)
    assert ct.label() == "2004-01-19 · CT · e+1 · 1 image"
    only = find_studies(pacs, {"StudyInstanceUID": CT_STUDY})
    assert [s.study_uid for s in only] == [CT_STUDY]


def test_fetch_then_ingest_a_study_like_a_file(pacs, store):
    before = leftovers()
    with fetched_study(pacs, CT_STUDY) as got:
        assert got.n_instances == 1 and len(got.inputs) == 1
        raw = got.inputs[0].read_bytes()
        if pacs.protocol == "dicomweb":  # WADO-RS with transfer-syntax=*: the stored bytes
            assert raw == Path(CT).read_bytes()
        else:  # C-GET sends the dataset; the pixels are the same
            assert pydicom.dcmread(got.inputs[0]).PixelData == pydicom.dcmread(CT).PixelData
        assert got.folder.stat().st_mode & 0o077 == 0  # identifiable: private to its owner
        stored = ingest_study(store, got)
    assert leftovers() == before  # raw files deleted
    assert stored.errors == []
    assert stored.image_ids == [load_image(CT).content_id()]
    meta = repr(store.get(stored.image_ids[0]).meta)
    assert "CompressedSamples" not in meta and "1CT1" not in meta and "JFK" not in meta


def test_the_guards_still_refuse_hostile_files_from_a_pacs(pacs, store):
    with fetched_study(pacs, MIXED_STUDY) as got:
        assert got.n_instances == 3
        stored = ingest_study(store, got)
    assert len(stored.image_ids) >= 1  # the CT is used
    errors = " | ".join(stored.errors)
    assert "image is too large to load safely" in errors  # header dimensions, before decoding
    if pacs.protocol == "dicomweb":  # the stored preamble arrives untouched, and is refused
        assert "Windows PE executable header" in errors and len(stored.errors) == 2
    else:  # DIMSE carries no preamble: the copy arrives as a plain CT
        assert len(stored.errors) == 1
    assert all(e.startswith("series-00") for e in stored.errors)  # names no patient or path


def test_a_study_over_the_instance_limit_is_refused_before_download(pacs):
    before = leftovers()
    with pytest.raises(StudyTooLargeError, match="the study has 3 instances, over the limit of 2"):
        fetch_study(replace(pacs, max_study_instances=2), MIXED_STUDY)
    assert leftovers() == before


def test_a_study_over_the_byte_limit_is_stopped_during_download(pacs):
    before = leftovers()
    with pytest.raises(StudyTooLargeError, match="larger than 20000 bytes"):
        fetch_study(replace(pacs, max_study_bytes=20_000), CT_STUDY)  # CT_small: 39 kB
    assert leftovers() == before


def test_an_unknown_study_is_named(pacs):
    with pytest.raises(StudyNotFoundError, match=r"no study 1\.2\.3\.999 on the PACS"):
        fetch_study(pacs, "1.2.3.999")


def test_wrong_credentials_are_refused(orthanc):  # noqa: F811
    web = PacsConfig(url=orthanc.dicomweb_url, user=orthanc.user, password="wrong")
    with pytest.raises(PacsAuthError, match=r"refused the study search \(HTTP 401\)"):
        find_studies(web)
    bad_aet = PacsConfig(url=orthanc.dimse_url.replace("ORTHANC@", "NOTORTHANC@"))
    with pytest.raises(PacsAuthError, match="rejected the association"):
        find_studies(bad_aet)


def test_results_are_stored_back(pacs, orthanc, tmp_path):  # noqa: F811
    from tests.orthanc import derived

    study = f"1.2.826.0.1.3680043.8.498.4242.{10 if pacs.protocol == 'dicomweb' else 11}"
    f = derived(get_testdata_file("MR_small.dcm"), tmp_path / "r.dcm", study=study)
    sop = str(pydicom.dcmread(f).SOPInstanceUID)
    assert store_results(pacs, [f]) == [sop]
    assert [s.n_instances for s in find_studies(pacs, {"StudyInstanceUID": study})] == [1]
