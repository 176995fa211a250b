"""webapp.pacs: the study picker, against a real Orthanc; the browser sees no patient or UID."""

from __future__ import annotations

import json

import gradio as gr
from pydicom.data import get_testdata_file

from agent import AgentContext
from tests.fakes import ScriptedChatModel
from tests.orthanc import (
    CT_STUDY,
    MIXED_STUDY,
    NEEDS_ORTHANC,
    orthanc,  # noqa: F401 - the module's server fixture
)
from tools.ingest.loader import load_image
from webapp.layout import make_app
from webapp.pacs import make_load, make_search, study_picker

pytestmark = NEEDS_ORTHANC
MB = 10**6


def context(tmp_path, **pacs) -> AgentContext:
    return AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path,
                        checkpoint="memory", **pacs)


def web(orthanc, tmp_path, password=None) -> AgentContext:  # noqa: F811
    return context(tmp_path, pacs_url=orthanc.dicomweb_url, pacs_user=orthanc.user,
                   pacs_password=password or orthanc.password)


def elem_ids(demo) -> set[str]:
    return {c["props"].get("elem_id") for c in demo.config["components"]}


def test_the_picker_is_shown_only_when_a_pacs_is_configured(orthanc, tmp_path):  # noqa: F811
    assert "pacs-studies" not in elem_ids(make_app(context(tmp_path / "a")))
    demo = make_app(web(orthanc, tmp_path / "b"))
    assert {"pacs-studies", "pacs-search", "pacs-load"} <= elem_ids(demo)
    # nothing about the PACS reaches the page's configuration: no URL, user or password
    page = json.dumps(demo.config, default=str)
    assert orthanc.password not in page and str(orthanc.http_port) not in page


def test_search_lists_pseudonymous_studies_with_patient_free_labels(orthanc, tmp_path):  # noqa: F811
    ctx = web(orthanc, tmp_path)
    picker = study_picker(ctx, 100 * MB)
    assert picker is not None
    choices, status = picker.search(None)
    labels = dict(choices)
    key = ctx.site_key()
    assert labels["2004-01-19 · CT · e+1 · 1 image"] == key.uid(CT_STUDY)
    shown = json.dumps(choices)
    for secret in ("CompressedSamples", "1CT1", CT_STUDY, MIXED_STUDY):
        assert secret not in shown
    assert status.endswith("found")
    only, _ = picker.search("no-such-patient")
    assert only == []


def test_loading_a_study_ingests_it_like_an_upload(orthanc, tmp_path):  # noqa: F811
    ctx = web(orthanc, tmp_path)
    picker = study_picker(ctx, 100 * MB)
    dropdown, _ = make_search(picker)(None)
    token = dict(dropdown.choices)["2004-01-19 · CT · e+1 · 1 image"]
    status, headers, pending, previews = make_load(picker)(token, ["img-000000000000"])
    ct_id = load_image(get_testdata_file("CT_small.dcm")).content_id()
    assert pending == ["img-000000000000", ct_id]  # joins what was waiting
    assert status.startswith(f"✅ `{ct_id}`") and "de-identified" in status
    assert "CompressedSamples" not in json.dumps(headers, default=str)
    assert len(previews) == 1 and ctx.store.get(ct_id).pixels.shape == (128, 128)


def test_a_study_with_hostile_files_loads_the_rest_and_names_them(orthanc, tmp_path):  # noqa: F811
    ctx = web(orthanc, tmp_path)
    picker = study_picker(ctx, 100 * MB)
    choices, _ = picker.search(None)
    mixed = ctx.site_key().uid(MIXED_STUDY)
    assert mixed in dict(choices).values()
    status, _, ids, _ = picker.load(mixed)
    assert len(ids) == 1 and status.count("❌ **Could not use**") == 2
    assert "Windows PE executable header" in status and "too large to load safely" in status


def test_pacs_problems_are_one_line_not_a_crash(orthanc, tmp_path):  # noqa: F811
    picker = study_picker(web(orthanc, tmp_path, password="wrong"), 100 * MB)
    choices, status = picker.search(None)
    assert choices == [] and status.startswith("❌ PACS:") and "HTTP 401" in status
    status, headers, ids, previews = picker.load("1.2.3")  # never listed here
    assert status == "❌ Search the PACS and choose a study first." and ids == []
    out = make_load(picker)(None, ["img-000000000000"])
    assert out[2] == ["img-000000000000"] and isinstance(out[1], type(gr.skip()))
