"""``medloop eval SUITE``: a benchmark suite through the agent (``agent.evaluation``).

Settings: ``--llm``, the planner options, ``--raw`` (``calibration="none"``) and
``--temperature`` (``llm_temperature``) become ``AgentContext`` fields through
``options.context``; the elicitor's model gets the planner's threads and temperature the way
the *think* node's does. Nothing here edits the environment.

The report leads with real-image figures when the suite has them: closed/open, per category and
per organ, each beside the baselines (``--baselines``; the majority answer is cross-validated
over ``--folds`` folds by image), and a calibration per image domain (``--save-calibration``
with no path saves each under ``$MEDLOOP_HOME/calibration/<spec>.<domain>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import agent.llm as backends
from agent.build import build_graph
from agent.cli.options import (
    LLM_HELP,
    BadInput,
    add_planner_options,
    checked_llm,
    context,
    emit_json,
    planner_settings,
)
from agent.context import AgentContext
from agent.evaluation.baselines import MAJORITY
from agent.evaluation.elicit import elicit_confidence
from agent.evaluation.folds import shuffled_by_image
from agent.evaluation.harness import BASELINES, evaluate
from agent.evaluation.items import EvalItem
from agent.evaluation.libraries import fold_libraries
from agent.evaluation.readers import SuiteError, load_suite
from agent.evaluation.runner import Record, Variant, read_records, run_suite
from agent.nodes.answer import calibration_name
from agent.planner.toolset import default_tools
from retrievers.shipped_library import overlapping
from retrievers.vqa_library import vqa_items_file

__all__ = ["add_parser", "cmd_eval", "run_context"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``sub`` (an argparse subparsers object)."""
    ev = sub.add_parser(
        "eval", help="run the agent over a benchmark suite and report accuracy and calibration"
    )
    ev.add_argument("suite", metavar="SUITE",
                    help="phantoms[:N[:SEED]] | a VQA-RAD / SLAKE / PathVQA / ChestAgentBench "
                         "JSON file | a generic .jsonl (FORMAT:PATH forces a format)")
    ev.add_argument("--limit", type=int, help="run only the first N items (after --skip)")
    ev.add_argument("--skip", type=int, default=0,
                    help="leave out the first N items: split a long suite across processes "
                         "(--skip 0 --limit 100, --skip 100 --limit 100, ...) and report the "
                         "merged records with --records")
    ev.add_argument("--ids", metavar="ID[,ID...]",
                    help="run only these items (after --shuffle/--skip/--limit): re-run the "
                         "items a change affects; with --library-folds the folds and libraries "
                         "stay those of the whole suite, so the records can replace the earlier "
                         "ones in a merged --records file")
    ev.add_argument("--shuffle", action="store_true",
                    help="run the suite's images in a seeded random order (--seed), each "
                         "image's questions together, before --skip/--limit: a run cut short "
                         "is a random sample of images, not the file's first ones")
    ev.add_argument("--llm", help=LLM_HELP)
    ev.add_argument("--repeats", type=int, default=1, help="runs per item (default 1)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--tools", help="offer only these tools of the default set (comma-separated "
                                     "names); default: all of them")
    add_planner_options(ev)
    ev.add_argument("--baselines", default=",".join(BASELINES),
                    help="comma-separated sanity baselines (blank, shuffled, question_only: "
                         "the agent shown other images; majority: the commonest answer of the "
                         "question's category in the other folds), or 'none'")
    ev.add_argument("--folds", type=int, default=5,
                    help="k of the k-fold cross-validation by image (majority baseline, "
                         "cross-fitted calibration; default 5)")
    ev.add_argument("--library-folds", action="store_true",
                    help="answer each item with a case library built from the suite's OTHER "
                         "folds (by image, --folds of them; with its trained heads and answer "
                         "model): cross-fitted case-based tools on a labelled JSON-lines suite; "
                         "libraries are kept under $MEDLOOP_HOME/eval-libraries/")
    ev.add_argument("--baseline-limit", type=int,
                    help="run the baselines on the first N items only")
    ev.add_argument("--fit-fraction", type=float, default=0.5,
                    help="share of items the calibration is fitted on (the rest report it)")
    ev.add_argument("--target-accuracy", type=float, default=0.9,
                    help="accuracy the abstention threshold is chosen for")
    ev.add_argument("--temperature", type=float,
                    help="sample the planner at this temperature, 0 to 2 (default: "
                         "$MEDLOOP_LLM_TEMPERATURE, else 0; repeats then differ: "
                         "self-consistency)")
    ev.add_argument("--elicit", action="store_true",
                    help="after each answer, ask the model to rate it (prompts/confidence); "
                         "one more model call per item")
    ev.add_argument("--raw", action="store_true",
                    help="ignore any saved calibration, MEDLOOP_CALIBRATION included (report "
                         "raw confidences)")
    ev.add_argument("--save-calibration", nargs="?", const="home", metavar="PATH",
                    help="save the fitted calibration (default: $MEDLOOP_HOME/calibration/)")
    ev.add_argument("--out", metavar="DIR", help="write report.json, records.jsonl and PNGs")
    ev.add_argument("--records", metavar="JSONL",
                    help="report (and fit calibration on) the records of an earlier run instead "
                         "of running the agent")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ev.set_defaults(func=cmd_eval)
    return ev


def _cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    lo, hi = c["accuracy_ci95"]
    open_ = (f" em {c['exact_match']} tr {c['token_recall']}" if "exact_match" in c else "")
    return f"{c['accuracy']} [{lo}, {hi}]{open_}"


def _paired(c: dict[str, Any]) -> str:
    """``  (won 3, lost 4, p 1.0)``: the items only one side got right, and McNemar's p.

    Empty for a category that answered nothing, or a report written before these were kept.
    """
    if not c.get("answered") or c.get("p_value") is None:
        return ""
    return f"  (won {c['won']}, lost {c['lost']}, p {c['p_value']:.2g})"


def _splits(report: dict[str, Any]) -> list[str]:
    """Accuracy per split, the agent beside each baseline (``[95% CI]``, open: em / tr)."""
    variants = ["full", *report["baselines"]]
    lines = []
    for split, table in report.get("by_split", {}).items():
        lines.append(f"by {split.replace('_', '/')}: " + " | ".join(variants))
        for value, row in table.items():
            n = max((c["n"] for c in row.values()), default=0)
            lines.append(f"  {value:<10} n={n:<4} " + " | ".join(_cell(row.get(v))
                                                              for v in variants))
    return lines


def _calibration(c: dict[str, Any]) -> list[str]:
    lines = [f"calibration [{c.get('domain')}] {c['method']} fitted on {c['n_fit_items']} "
             f"items, on the other {c['n_test_items']} (split by {c.get('split_by')}): ECE "
             f"{c['ece_before']} → {c['ece_after']} (floor {c['ece_noise_floor']}), Brier "
             f"{c['brier_before']} → {c['brier_after']}, AURC {c['aurc_before']} → "
             f"{c['aurc_after']}; abstain below {c['abstain_below']} → coverage "
             f"{c.get('coverage')}, selective accuracy {c['selective_accuracy']}"]
    forms = c.get("by_form") or {}
    if forms:
        lines.append("  a map per question form: " + ", ".join(
            f"{f} {m['method']} ({m['n_fit']} items)" for f, m in forms.items()))
    if c.get("crossfit_n_items"):
        lines.append(f"cross-fitted ({c.get('crossfit_folds')} folds by image, all "
                     f"{c['crossfit_n_items']} items): ECE {c['crossfit_ece_before']} → "
                     f"{c['crossfit_ece_after']} (95% CI {c['crossfit_ece_after_ci95']}; "
                     f"a perfectly calibrated confidence would show "
                     f"{c['crossfit_ece_noise_floor']} on these items), Brier "
                     f"{c['crossfit_brier_after']}, AURC {c['crossfit_aurc_after']}, coverage "
                     f"{c.get('crossfit_coverage')} at selective accuracy "
                     f"{c.get('crossfit_selective_accuracy')}")
    if c.get("crossfit_ece_after_with_agreement") is not None:
        lines.append(f"with self-consistency: ECE → "
                     f"{c['crossfit_ece_after_with_agreement']} (floor "
                     f"{c['crossfit_ece_noise_floor_with_agreement']}), AURC "
                     f"{c['crossfit_aurc_after']} → {c['crossfit_aurc_after_with_agreement']}")
    return lines


def _human(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [f"suite {report['suite']}  ·  {report['n_items']} items  ·  llm {report['llm']}",
             f"accuracy {m['accuracy']} (95% CI {m['accuracy_ci95']})  closed "
             f"{m.get('closed_accuracy')} (n={m.get('n_closed')})  open {m.get('open_accuracy')}"
             f" (n={m.get('n_open')}; exact match {m.get('open_exact_match')}, token recall "
             f"{m.get('open_token_recall')})",
             f"ECE {m['ece_15']} (noise floor {m.get('ece_noise_floor')})  Brier {m['brier']}  "
             f"AURC {m['aurc']}  abstained {m['abstention_rate']}  selective accuracy "
             f"{m['selective_accuracy']}",
             f"answers contradicting their cited evidence: "
             f"{m.get('answers_contradicting_evidence')} given, "
             f"{m.get('answers_contradicting_evidence_all')} in all",
             f"grounding IoU {m['grounding_iou']}  size error {m['size_error_mm_mean']} mm  "
             f"latency p50 {m['latency_s_p50']} s  p95 {m['latency_s_p95']} s  "
             f"tool calls/item {m['tool_calls_per_item']}",
             f"time per item p50: planner {m.get('planner_s_p50')} s over "
             f"{m.get('planner_calls_per_item')} calls, tools {m.get('tools_s_p50')} s"]
    for name, b in report["baselines"].items():
        lines.append(f"baseline {name}: accuracy {b['accuracy']} (95% CI {b['accuracy_ci95']}),"
                     f" n={b['n_items']}")
    lines += _splits(report)
    answered = report.get("by_category_answered") or {}
    if answered:
        lines.append("answered items vs the majority answer on the same items (verdict):")
        for value, c in answered.items():
            lines.append(f"  {value:<10} n={c['n']:<4} answered {c['answered']:<4} "
                         f"{c['accuracy']} vs {c['baseline_accuracy']}  {c['verdict']}"
                         f"{_paired(c)}")
    for c in (report.get("calibration_by_domain") or {}).values():
        lines += _calibration(c)
    stated = report.get("by_category_at_threshold") or {}
    if stated:
        lines.append("stated without 'Uncertain' at the cross-fitted threshold, vs the majority "
                     "answer on the same items (verdict):")
        for value, c in stated.items():
            lines.append(f"  {value:<10} n={c['n']:<4} stated {c['answered']:<4} "
                         f"{c['accuracy']} vs {c['baseline_accuracy']}  {c['verdict']}"
                         f"{_paired(c)}")
    return "\n".join(lines)


def run_context(args: argparse.Namespace) -> AgentContext:
    """The settings of one evaluation: the options given over ``MEDLOOP_*``, in memory.

    Each item runs in its own thread; the in-memory checkpointer keeps nothing on disk.
    """
    if args.temperature is not None and not 0.0 <= args.temperature <= 2.0:
        raise BadInput(f"--temperature must be from 0 to 2, got {args.temperature:g}")
    given = {"llm": args.llm, "calibration": "none" if args.raw else None,
             "llm_temperature": args.temperature, **planner_settings(args)}
    return context(given, checkpoint="memory")


def _checked(args: argparse.Namespace
             ) -> tuple[list[EvalItem], list[str], list[EvalItem]]:
    """The items to run, the baselines and the whole suite (``BadInput`` names a problem)."""
    if args.repeats < 1 or (args.limit is not None and args.limit < 1):
        raise BadInput("--repeats and --limit must be at least 1")
    if args.skip < 0:
        raise BadInput("--skip must be 0 or more")
    baselines = [] if args.baselines == "none" else [
        b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise BadInput(f"unknown baseline {bad[0]!r}; choose from {', '.join(BASELINES)}")
    if args.folds < 2:
        raise BadInput("--folds must be at least 2")
    try:
        items = load_suite(args.suite)
    except SuiteError as exc:
        raise BadInput(str(exc)) from exc
    every = items
    if args.skip >= len(items):
        raise BadInput(f"--skip {args.skip} leaves none of the suite's {len(items)} items")
    if args.shuffle:
        items = shuffled_by_image(items, args.seed)
    items = items[args.skip:]
    items = items[: args.limit] if args.limit else items
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        missing = sorted(set(wanted) - {it.id for it in items})
        if missing:
            raise BadInput(f"--ids: {', '.join(missing[:5])} not among the suite's items "
                           f"(after --skip/--limit)")
        items = [it for it in items if it.id in set(wanted)]
    return items, baselines, every


def _graph_factory(ctx: AgentContext, tools: str | None) -> Callable[[], tuple[Any, Any]]:
    """``make_graph()`` for the harness: a graph on ``ctx``, offering only ``tools`` if named."""

    def make_graph() -> tuple[Any, Any]:
        chosen = None
        if tools:
            wanted = [t.strip() for t in tools.split(",") if t.strip()]
            have = {t.name: t for t in default_tools(ctx)}
            unknown = [t for t in wanted if t not in have]
            if unknown:
                raise BadInput(f"unknown tool {unknown[0]!r}; have {', '.join(sorted(have))}")
            chosen = [have[t] for t in wanted]
        return build_graph(ctx, tools=chosen), ctx.store

    return make_graph


def _progress(args: argparse.Namespace) -> Callable[[Record, int, int], None]:
    """Progress lines on stderr, and each record appended to ``records.partial.jsonl``."""
    partial = Path(args.out) / "records.partial.jsonl" if args.out else None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")

    def progress(rec: Record, k: int, n: int) -> None:
        if partial is not None:  # so a run cut short can still be reported (--records)
            with partial.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec.as_dict(), default=str) + "\n")
        if not args.quiet:
            mark = "ok " if rec.correct else "err" if rec.error else "no "
            sys.stderr.write(f"[eval] {k}/{n} {rec.variant:<13} {mark} {rec.item_id} "
                             f"conf {rec.confidence:.2f} ({rec.latency_s:.1f} s)\n")
            sys.stderr.flush()

    return progress


def _elicitor(ctx: AgentContext, spec: str) -> Callable[[str, str, list[str]], float | None]:
    """``elicit(question, answer, evidence)`` with the run's own planner model.

    The model is made as the *think* node makes it (same spec, threads and temperature), so
    the rating comes from the planner that answered.
    """
    model = backends.make_chat_model(spec, threads=ctx.llm_threads,
                                     temperature=ctx.llm_temperature, home=ctx.home_dir)
    return lambda q, a, ev: elicit_confidence(model, q, a, ev)


def _calibration_target(
    given: str | None, ctx: AgentContext, spec: str
) -> Path | Callable[[str], Path] | None:
    """Where fitted maps are saved: a path, or under ``$MEDLOOP_HOME`` one file per domain.

    ``home`` names each map as the answer node looks it up (``calibration_name(spec, samples,
    domain)``), so the next run on the same configuration uses it for that domain only; an
    existing folder gets the maps under those names too (a folder is not a file to write).
    """
    if not given:
        return None
    folder = ctx.home_dir / "calibration" if given == "home" else Path(given)
    if given != "home" and not folder.is_dir():
        return folder

    def named(domain: str) -> Path:
        return folder / calibration_name(spec, ctx.answer_samples, domain)

    return named


def _cross_fitted(args: argparse.Namespace, ctx: AgentContext, items: list[EvalItem],
                  baselines: list[str], every: list[EvalItem]) -> list[Record]:
    """Records of ``items``, each answered with the library of the other folds' images."""
    if args.records:
        raise BadInput("--library-folds runs the agent; it cannot be given --records")
    items_file = vqa_items_file(args.suite.split(":", 1)[-1])
    if items_file is None:
        raise BadInput(f"--library-folds needs a labelled JSON-lines suite (the VQA-RAD dev "
                       f"set's format), not {args.suite!r}")

    def say(msg: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"[eval] {msg}\n")

    library_of = fold_libraries(items_file, every, args.folds, args.seed,
                                ctx.home_dir / "eval-libraries", progress=say)
    variants = cast("list[Variant]", ["full", *[b for b in baselines if b != MAJORITY]])
    progress = _progress(args)
    records: list[Record] = []
    for path in sorted({library_of[it.id] for it in items}):
        part = [it for it in items if library_of[it.id] == path]
        fold_ctx = dataclasses.replace(ctx, library=path)
        records += run_suite(_graph_factory(fold_ctx, args.tools), part, variants=variants,
                             repeats=args.repeats, seed=args.seed,
                             baseline_limit=args.baseline_limit, progress=progress)
    return records


def _unlearnt(ctx: AgentContext, items: list[EvalItem], quiet: bool) -> AgentContext:
    """``ctx`` without its fallback labelled library when that library holds suite images.

    ``case_answer`` over a library built from the very images being scored (the shipped one
    holds the VQA-RAD dev set's 111) would answer from their own labels: accuracy it has
    memorised, not measured. Found by content (``images.sha256`` beside the library), the
    library is left out of the run and the run says so; ``--library-folds`` is the
    cross-fitted way to score case-based answers on a labelled suite.
    """
    source = ctx.answers_library_path
    if source is None:
        return ctx
    paths = [im for it in items for im in it.images if isinstance(im, str)]
    learnt = overlapping(paths, source)
    if not learnt:
        return ctx
    if not quiet:
        sys.stderr.write(f"[eval] the labelled case library {source} was built from "
                         f"{len(learnt)} of this suite's images: case_answer is left out of "
                         "this run (it would answer from their own labels); --library-folds "
                         "scores case-based answers cross-fitted by image\n")
    return dataclasses.replace(ctx, answers_library="none")


def cmd_eval(args: argparse.Namespace) -> int:
    """Run a suite through the agent and print (and optionally save) the report."""
    ctx = run_context(args)
    spec = checked_llm(ctx)
    items, baselines, every = _checked(args)
    if not (args.records or args.library_folds):  # fold libraries hold no scored image
        ctx = _unlearnt(ctx, items, args.quiet)
    save = _calibration_target(args.save_calibration, ctx, spec)
    records = (_cross_fitted(args, ctx, items, baselines, every) if args.library_folds
               else read_records(args.records) if args.records else None)
    result = evaluate(
        items, make_graph=_graph_factory(ctx, args.tools), suite=args.suite, llm=spec,
        baselines=baselines, baseline_limit=args.baseline_limit,
        repeats=args.repeats, seed=args.seed, folds=args.folds, fit_fraction=args.fit_fraction,
        target_accuracy=args.target_accuracy, out_dir=args.out, save_calibration_to=save,
        progress=_progress(args) if records is None else None,
        records=records,
        elicit=_elicitor(ctx, spec) if args.elicit else None, suite_items=every,
    )
    if args.json:
        emit_json(result.report)
    else:
        sys.stdout.write(_human(result.report) + "\n")
        for f in result.files:
            sys.stdout.write(f"wrote {f}\n")
    return 0
