"""``medloop ask IMAGE... QUESTION``: run the agent once and print its answer.

Progress (one line per trace record: think, act, rethink, ...) goes to stderr so ``--json`` on
stdout stays machine-readable. ``--thread`` continues a conversation kept by the checkpointer.
``--sr OUT.dcm`` also writes the answer as a DICOM Structured Report and its masks as DICOM
Segmentations (``agent.dicom_sr``), referencing the DICOM inputs by their keyed pseudonymous
UIDs (the site secret, ``$MEDLOOP_HOME/site_secret``, is created on first use).
``--study UID`` fetches a study from the PACS (``--pacs URL`` or ``MEDLOOP_PACS_URL``; DICOMweb
or DIMSE, ``tools.pacs``) into a private temp folder, ingests it like files (same guards, same
de-identification; a refused file is named and skipped) and deletes the raw files after the run;
``--stow`` sends the ``--sr`` report and its Segmentations back to that PACS.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.build import build_graph
from agent.checkpoint import check_spec
from agent.cli.options import (
    DISCLAIMER,
    LLM_HELP,
    BadInput,
    add_planner_options,
    checked_llm,
    context,
    emit,
    pacs_settings,
    planner_settings,
)
from agent.trace import TraceStep

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

__all__ = ["add_parser", "cmd_ask", "progress_line"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``ask`` to ``sub`` (an argparse subparsers object)."""
    ask = sub.add_parser("ask", help="answer a question about one or more images")
    # Two positionals, not one "+" list: argparse renders the latter as "[IMAGE...] QUESTION
    # [[IMAGE...] QUESTION ...]", which reads as if several questions could follow.
    ask.add_argument("images", nargs="*", metavar="IMAGE",
                     help="image files (DICOM, PNG, JPEG, NIfTI) or stored image ids")
    ask.add_argument("question", metavar="QUESTION", help="one question (--thread to go on)")
    ask.add_argument("--llm", help=LLM_HELP)
    ask.add_argument("--thread", help="continue this conversation thread")
    add_planner_options(ask)
    ask.add_argument("--checkpoint",
                     help="sqlite (default) | sqlite:PATH | memory | none | postgresql://DSN")
    ask.add_argument("--sr", metavar="OUT.dcm",
                     help="also write the answer as a DICOM Structured Report (TID 1500) and "
                          "its masks as DICOM Segmentation (OUT-seg.dcm); needs a DICOM image")
    ask.add_argument("--seg", metavar="SEG.dcm", help="where --sr writes the masks")
    ask.add_argument("--pacs", metavar="URL",
                     help="the PACS for --study / --stow: http(s)://HOST/dicom-web (DICOMweb) or "
                          "dicom://AET@HOST:PORT (DIMSE); default $MEDLOOP_PACS_URL. Credentials "
                          "come from MEDLOOP_PACS_USER / _PASSWORD / _TOKEN or MEDLOOP_PACS_CONFIG")
    ask.add_argument("--study", metavar="UID",
                     help="fetch this study (Study Instance UID) from the PACS and ask about it")
    ask.add_argument("--stow", action="store_true",
                     help="store the --sr report and its Segmentations back on the PACS "
                          "(STOW-RS, or C-STORE for a dicom:// PACS)")
    ask.add_argument("--json", action="store_true", help="print JSON")
    ask.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ask.set_defaults(func=cmd_ask)
    return ask


def progress_line(step: TraceStep) -> str:
    """One human line for a trace record (the ``[medloop]`` progress on stderr)."""
    if step["step"] == "think" and step.get("consulted"):
        return f"consult {', '.join(step['calls'])} (asked first, no planner call)"
    if step["step"] == "think" and step.get("stopped"):
        return f"stop   {step['stopped']}"
    if step["step"] == "think":
        calls = ", ".join(step["calls"]) or "a reply"
        return f"think  round {step['round']}: {calls} ({step['elapsed_s']:.1f} s)"
    if step["step"] == "act":
        return f"act    {step['tool']} → {step['status']} ({step['elapsed_s']:.2f} s)"
    if step["step"] == "rethink":
        return f"rethink {step['decision']}: {len(step['problems'])} problem(s)"
    return step["step"]


def _progress(event: dict[str, Any]) -> None:
    """Print the trace records one ``stream_mode="updates"`` event added."""
    for update in event.values():
        if not isinstance(update, dict):
            continue
        for step in update.get("trace") or []:
            sys.stderr.write(f"[medloop] {progress_line(step)}\n")
            sys.stderr.flush()


def _human(data: dict[str, Any]) -> str:
    """The answer, its confidence, findings, evidence and contradictions, for people."""
    lines = [str(data["answer"]), ""]
    lines.append(
        f"confidence {data['confidence']:.2f}" + ("  (abstained)" if data["abstained"] else "")
    )
    for f in data["findings"]:
        lines.append(f"- {f['statement']} [{', '.join(f['evidence_ids'])}]")
    for e in data["evidence"]:
        lines.append(f"  {e['id']} {e['tool']} ({e['status']}): {e['summary']}")
    for c in data.get("contradictions") or []:
        lines.append(f"! {c}")
    if data.get("dicom"):
        lines.append("wrote " + ", ".join(data["dicom"]["written"]))
        if data["dicom"].get("stored"):
            lines.append(f"stored {len(data['dicom']['stored'])} object(s) on the PACS")
        lines += [f"  note: {n}" for n in data["dicom"]["notes"]]
    lines.append(f"thread {data['thread']}  ·  {DISCLAIMER}")
    return "\n".join(lines)


def _reads_as_question(arg: str) -> bool:
    """Whether an IMAGE argument is a second question rather than a file or a stored id.

    Stored ids and file names hold no spaces and end in no "?"; an argument that does, and is
    no file, was meant as a question (``ask IMG "Q1" IMG "Q2"``).
    """
    return (any(c.isspace() for c in arg) or arg.endswith("?")) and not Path(arg).exists()


def cmd_ask(args: argparse.Namespace) -> int:
    """Run the agent once and print its answer."""
    images, question = list(args.images), str(args.question)
    if not images and not args.study:
        raise BadInput("ask needs at least one IMAGE (or --study UID) and a QUESTION")
    asked = [a for a in images if _reads_as_question(a)]
    if asked:
        raise BadInput(f"ask takes one QUESTION, the last argument; {asked[0]!r} is not an "
                       "image file. Ask one question per call (--thread ID goes on in the "
                       "same conversation)")
    if not question.strip():
        raise BadInput("the question is empty")
    if args.seg and not args.sr:
        raise BadInput("--seg needs --sr")
    if args.stow and not args.sr:
        raise BadInput("--stow needs --sr (the report it stores)")
    ctx = context({"llm": args.llm, "checkpoint": args.checkpoint, **planner_settings(args)})
    llm = checked_llm(ctx)
    try:
        check_spec(ctx.checkpoint)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    pacs = pacs_settings(ctx, args.pacs) if args.study or args.stow else None
    with contextlib.ExitStack() as cleanup:
        fetched: dict[str, Any] = {}
        if args.study:
            assert pacs is not None
            fetched = _fetch_study(pacs, args.study, ctx, cleanup, args.quiet)
            images = [*images, *fetched["image_ids"]]
        return _run(args, ctx, llm, question, images, fetched, pacs)


def _fetch_study(pacs: Any, study: str, ctx: Any, cleanup: contextlib.ExitStack,
                 quiet: bool) -> dict[str, Any]:
    """Fetch and ingest ``study``; its raw files are deleted when ``cleanup`` closes.

    Returns what the answer reports about it (counts and refused files; no UID, no patient).
    """
    from tools.pacs.fetch import fetch_study, ingest_study

    try:
        got = fetch_study(pacs, study)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    cleanup.callback(got.delete)
    stored = ingest_study(ctx.store, got)
    if not quiet:
        sys.stderr.write(f"[medloop] fetched {got.n_instances} instance(s), "
                         f"{got.n_bytes / 1e6:.1f} MB from {pacs.where} in "
                         f"{got.elapsed_s:.1f} s\n")
        for line in stored.errors:
            sys.stderr.write(f"[medloop] skipped {line}\n")
    if not stored.image_ids:
        raise BadInput("no usable image in the study: " + "; ".join(stored.errors))
    return {"image_ids": stored.image_ids, "dicom_files": stored.dicom_files,
            "report": {"instances": got.n_instances, "bytes": got.n_bytes,
                       "fetch_s": round(got.elapsed_s, 3), "skipped": stored.errors}}


def _run(args: argparse.Namespace, ctx: Any, llm: str, question: str, images: list[str],
         fetched: dict[str, Any], pacs: Any) -> int:
    """Run the graph on ``images`` (paths or stored ids) and print the answer."""
    graph = build_graph(ctx)
    thread = args.thread or uuid.uuid4().hex[:12]
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    t0 = time.perf_counter()
    if not args.quiet:
        sys.stderr.write(f"[medloop] thinking with {llm} …\n")
    for event in graph.stream(
        {"messages": [("user", question)], "images": images}, config, stream_mode="updates"
    ):
        if not args.quiet:
            _progress(event)
    state = graph.get_state(config).values
    answer = state["answer"]
    turn = state.get("turn")
    out = {
        "answer": answer.text,
        "confidence": round(answer.confidence, 4),
        "abstained": answer.abstained,
        "findings": [f.model_dump() for f in answer.findings],
        "contradictions": answer.contradictions,
        "budget_exhausted": answer.budget_exhausted,
        "evidence": [e.model_dump(mode="json") for e in state.get("evidence") or []],
        "images": [r.model_dump(mode="json") for r in state.get("image_refs") or []],
        "trace": [t for t in state.get("trace") or [] if t["turn"] == turn],
        "thread": thread,
        "llm": llm,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    if fetched:
        out["pacs_study"] = fetched["report"]
    if args.sr:
        sources = [*images, *(str(p) for p in fetched.get("dicom_files", []))]
        out["dicom"] = _write_dicom(args, ctx, sources, state, llm)
        if args.stow:
            from tools.pacs.errors import PacsError
            from tools.pacs.fetch import store_results

            try:
                out["dicom"]["stored"] = store_results(pacs, out["dicom"]["written"])
            except PacsError as exc:  # the answer and the files written still count
                out["dicom"]["stow_error"] = str(exc)
    emit(out, args.json, _human)
    if out.get("dicom", {}).get("stow_error"):
        sys.stderr.write(f"medloop: not stored on the PACS: {out['dicom']['stow_error']}\n")
        return 1
    return 0


def _write_dicom(args: argparse.Namespace, ctx: Any, images: list[str], state: dict[str, Any],
                 llm: str) -> dict[str, Any]:
    """Write the SR (and SEGs) for the run's answer; the files written and what was left out."""
    from agent.dicom_sr import build_results, write_results
    key = ctx.site_key()
    sources = dicom_sources(images, key)
    if not sources:
        raise BadInput("--sr needs at least one DICOM file among the images")
    store = ctx.store
    results = build_results(state["answer"], state.get("evidence") or [], sources,
                            store.get_array, planner=llm)
    written = write_results(results, args.sr, args.seg)
    return {"written": [str(p) for p in written], "notes": results.notes,
            "site_key": key.fingerprint}


def dicom_sources(images: list[str], key: Any) -> dict[str, Any]:
    """Store image id -> ``DicomSource`` for each single DICOM file among ``images``.

    The id is the one *ingest* gave the file (content addressed, so loading it again finds
    it); the header is de-identified with the site key, so it names the same pseudonymous UIDs
    as any other de-identification of the file at this site.
    """
    import pydicom

    from agent.dicom_sr import DicomSource
    from tools.ingest.deid import new_anonymizer, read_deidentified
    from tools.ingest.dicom import DICOM_HEADER_BYTES, has_dicm_prefix
    from tools.ingest.loader import load_image
    from tools.ingest.pseudonym import patient_key

    anonymizer = new_anonymizer(key=key)
    out: dict[str, Any] = {}
    for item in images:
        path = Path(item)
        if not path.is_file():
            continue
        with path.open("rb") as f:
            if not has_dicm_prefix(f.read(DICOM_HEADER_BYTES)):
                continue
        original = pydicom.dcmread(path, stop_before_pixels=True)
        shift = key.date_shift_days(patient_key(original))
        out[load_image(path).content_id()] = DicomSource(
            header=read_deidentified(path, anonymizer), date_shift_days=shift)
    return out
