"""The study picker: search the PACS the operator configured and load a study like an upload.

Shown only when a PACS is configured (``MEDLOOP_PACS_URL`` or ``MEDLOOP_PACS_CONFIG``, read by
``AgentContext``). Everything that talks to the PACS runs on the server: the browser sends a
patient-id filter and a study choice, never a URL or a credential, and gets back labels with
no patient name or id (date, modalities, description, image count). A study is named in the
browser by its *pseudonymous* Study Instance UID (the one the site key gives it, as in the
de-identified images and reports); the server keeps the map back to the original. A loaded
study is fetched to a private temp folder, goes through ``webapp.uploads.ingest_uploads`` (the
same ingest, guards and de-identification as an upload; a refused file is named, the rest is
used) and is deleted; its images join the ones waiting for the next question.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gradio as gr

from agent import AgentContext
from tools.pacs.config import PacsConfig
from tools.pacs.errors import PacsError
from webapp.uploads import ingest_uploads, upload_status

__all__ = ["StudyPicker", "add_picker", "study_picker", "wire_picker"]

MAX_LISTED = 50
_MAX_REMEMBERED = 10_000  # pseudonym -> original entries kept (a bound, not a cache policy)


class StudyPicker:
    """The server side of the picker: the PACS settings and the pseudonym -> UID map."""

    def __init__(self, ctx: AgentContext, config: PacsConfig, max_bytes: int) -> None:
        self.ctx = ctx
        self.config = config
        self.max_bytes = max_bytes
        self._originals: dict[str, str] = {}
        self._lock = threading.Lock()

    def search(self, patient_id: str | None) -> tuple[list[tuple[str, str]], str]:
        """(label, pseudonymous UID) choices for the studies found, and a status line."""
        from tools.pacs.fetch import find_studies

        wanted = (patient_id or "").strip()
        filters = {"PatientID": wanted} if wanted else {}
        try:
            studies = find_studies(self.config, filters, MAX_LISTED)
        except PacsError as exc:
            return [], f"❌ PACS: {exc}"
        key = self.ctx.site_key()
        choices = []
        with self._lock:
            if len(self._originals) > _MAX_REMEMBERED:
                self._originals.clear()
            for s in studies:
                token = key.uid(s.study_uid)
                self._originals[token] = s.study_uid
                choices.append((s.label(), token))
        found = f"{len(choices)} stud{'y' if len(choices) == 1 else 'ies'} found"
        return choices, found + (f" (the first {MAX_LISTED})" if len(choices) >= MAX_LISTED else "")

    def load(self, token: str | None) -> tuple[str, dict[str, Any], list[str], list[Any]]:
        """Fetch and ingest the chosen study: (status, headers, image ids, previews)."""
        from tools.pacs.fetch import fetched_study

        with self._lock:
            original = self._originals.get(token or "")
        if original is None:
            return "❌ Search the PACS and choose a study first.", {}, [], []
        try:
            with fetched_study(self.config, original) as study:
                res = ingest_uploads(self.ctx, [str(p) for p in study.inputs], self.max_bytes)
        except PacsError as exc:
            return f"❌ PACS: {exc}", {}, [], []
        return upload_status(res), res.headers, res.image_ids, list(res.previews)


def study_picker(ctx: AgentContext, max_bytes: int) -> StudyPicker | None:
    """The picker for ``ctx``'s PACS, or None when none is configured.

    Raises:
        ValueError: the PACS settings are malformed (the app does not start half-configured).
    """
    config = ctx.pacs()
    return StudyPicker(ctx, config, max_bytes) if config is not None else None


def add_picker(ui: dict[str, Any]) -> None:
    """Lay out the picker's components (inside the current Gradio block) into ``ui``."""
    with gr.Accordion("Load a study from the PACS", open=False, elem_id="pacs"):
        with gr.Row():
            ui["pacs_patient"] = gr.Textbox(label="Patient ID (optional filter)", scale=2,
                                            elem_id="pacs-patient")
            ui["pacs_search"] = gr.Button("Search", scale=1, elem_id="pacs-search")
        ui["pacs_studies"] = gr.Dropdown([], label="Studies (no patient names are shown)",
                                         elem_id="pacs-studies")
        ui["pacs_load"] = gr.Button("Load study", elem_id="pacs-load")
        ui["pacs_status"] = gr.Markdown(elem_id="pacs-status")


def make_search(picker: StudyPicker) -> Callable[[str | None], tuple[Any, str]]:
    """The Search button: the study list's new choices and a status line."""

    def search(patient_id: str | None) -> tuple[Any, str]:
        choices, status = picker.search(patient_id)
        return gr.Dropdown(choices=choices, value=None), status

    return search


def make_load(picker: StudyPicker) -> Callable[..., tuple[Any, ...]]:
    """The Load button: (status, header, pending ids, previews), like an upload's."""

    def load(token: str | None, pending: list[str] | None) -> tuple[Any, ...]:
        status, headers, ids, previews = picker.load(token)
        if status.startswith("❌"):
            gr.Warning(status.removeprefix("❌ "))
        queue = list(dict.fromkeys([*(pending or []), *ids]))
        return status, headers or gr.skip(), queue, previews or gr.skip()

    return load


def wire_picker(ui: dict[str, Any], picker: StudyPicker) -> None:
    """Connect the picker's buttons; loads share the uploads' queue."""
    ui["pacs_search"].click(make_search(picker), [ui["pacs_patient"]],
                            [ui["pacs_studies"], ui["pacs_status"]], api_visibility="private",
                            concurrency_id="upload")
    ui["pacs_load"].click(make_load(picker), [ui["pacs_studies"], ui["pending"]],
                          [ui["pacs_status"], ui["header"], ui["pending"], ui["previews"]],
                          api_visibility="private", concurrency_id="upload")
