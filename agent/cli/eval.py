"""``medloop eval SUITE``: the argument parser and the command, kept beside the harness."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_eval_parser", "cmd_eval"]


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
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
    ev.add_argument("--llm", default="embedded",
                    help="embedded | openai:MODEL@BASE_URL | openai-json:MODEL@BASE_URL | "
                         "hf:ID_OR_PATH")
    ev.add_argument("--repeats", type=int, default=1, help="runs per item (default 1)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--tools", help="offer only these tools of the default set (comma-separated "
                                     "names); default: all of them")
    from agent.cli.main import add_planner_options

    add_planner_options(ev)
    ev.add_argument("--baselines", default="blank,shuffled,question_only",
                    help="comma-separated sanity baselines, or 'none'")
    ev.add_argument("--baseline-limit", type=int,
                    help="run the baselines on the first N items only")
    ev.add_argument("--fit-fraction", type=float, default=0.5,
                    help="share of items the calibration is fitted on (the rest report it)")
    ev.add_argument("--target-accuracy", type=float, default=0.9,
                    help="accuracy the abstention threshold is chosen for")
    ev.add_argument("--temperature", type=float,
                    help="sample the embedded planner at this temperature (sets "
                         "MEDLOOP_LLM_TEMPERATURE; repeats then differ: self-consistency)")
    ev.add_argument("--elicit", action="store_true",
                    help="after each answer, ask the model to rate it (prompts/confidence); "
                         "one more model call per item")
    ev.add_argument("--raw", action="store_true",
                    help="ignore any saved calibration (report raw confidences)")
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


def _human(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [f"suite {report['suite']}  ·  {report['n_items']} items  ·  llm {report['llm']}",
             f"accuracy {m['accuracy']} (95% CI {m['accuracy_ci95']})  ECE {m['ece_15']}  "
             f"Brier {m['brier']}  AURC {m['aurc']}",
             f"abstained {m['abstention_rate']}  selective accuracy {m['selective_accuracy']}  "
             f"grounding IoU {m['grounding_iou']}  size error {m['size_error_mm_mean']} mm",
             f"latency p50 {m['latency_s_p50']} s  p95 {m['latency_s_p95']} s  "
             f"tool calls/item {m['tool_calls_per_item']}"]
    for name, b in report["baselines"].items():
        lines.append(f"baseline {name}: accuracy {b['accuracy']} (95% CI {b['accuracy_ci95']}),"
                     f" n={b['n_items']}")
    c = report.get("calibration")
    if c:
        lines.append(f"calibration {c['method']} fitted on {c['n_fit_items']} items, on the "
                     f"other {c['n_test_items']}: ECE {c['ece_before']} → {c['ece_after']}, "
                     f"Brier {c['brier_before']} → {c['brier_after']}; abstain below "
                     f"{c['abstain_below']} → abstention {c['abstention_rate']}, selective "
                     f"accuracy {c['selective_accuracy']}")
        if c.get("crossfit_n_items"):
            lines.append(f"cross-fitted (each half mapped by the other's fit, all "
                         f"{c['crossfit_n_items']} items): ECE {c['crossfit_ece_before']} → "
                         f"{c['crossfit_ece_after']} (95% CI {c['crossfit_ece_after_ci95']}; "
                         f"a perfectly calibrated confidence would show "
                         f"{c['crossfit_ece_noise_floor']} on these items)")
        if c.get("crossfit_ece_after_with_agreement") is not None:
            lines.append(f"with self-consistency: ECE → "
                         f"{c['crossfit_ece_after_with_agreement']} (floor "
                         f"{c['crossfit_ece_noise_floor_with_agreement']}), AURC "
                         f"{c['crossfit_aurc_after']} → {c['crossfit_aurc_after_with_agreement']}")
    return "\n".join(lines)


def _checked(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """The suite's items and the baselines, or ``BadInput`` naming what is wrong."""
    from agent.cli.main import BadInput, planner_settings
    from agent.evaluation.readers import SuiteError, load_suite
    from agent.evaluation.runner import VARIANTS
    from agent.llm import parse_spec

    try:
        parse_spec(args.llm)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if args.repeats < 1 or (args.limit is not None and args.limit < 1):
        raise BadInput("--repeats and --limit must be at least 1")
    if args.skip < 0:
        raise BadInput("--skip must be 0 or more")
    planner_settings(args)
    baselines = [] if args.baselines == "none" else [
        b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in baselines if b not in VARIANTS or b == "full"]
    if bad:
        raise BadInput(f"unknown baseline {bad[0]!r}; choose from blank, shuffled, question_only")
    try:
        items = load_suite(args.suite)
    except SuiteError as exc:
        raise BadInput(str(exc)) from exc
    if args.skip >= len(items):
        raise BadInput(f"--skip {args.skip} leaves none of the suite's {len(items)} items")
    items = items[args.skip:]
    return (items[: args.limit] if args.limit else items), baselines


def _graph_factory(args: argparse.Namespace) -> Any:
    """``make_graph()`` for the harness: a fresh graph on the run settings, tools filtered."""
    from agent.build import build_graph
    from agent.cli.main import BadInput, planner_settings
    from agent.context import AgentContext

    def make_graph() -> tuple[Any, Any]:
        ctx = AgentContext(llm=args.llm, checkpoint="memory", **planner_settings(args))
        if args.tools:
            from agent.planner.toolset import default_tools

            wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
            have = {t.name: t for t in default_tools(ctx.store, ctx.device)}
            unknown = [t for t in wanted if t not in have]
            if unknown:
                raise BadInput(f"unknown tool {unknown[0]!r}; have {', '.join(sorted(have))}")
            ctx.tools = [have[t] for t in wanted]
        return build_graph(ctx), ctx.store

    return make_graph


def _progress(args: argparse.Namespace) -> Any:
    """Progress lines on stderr, and each record appended to ``records.partial.jsonl``."""
    partial = Path(args.out) / "records.partial.jsonl" if args.out else None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")

    def progress(rec: Any, k: int, n: int) -> None:
        if partial is not None:  # so a run cut short can still be reported (--records)
            with partial.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec.as_dict(), default=str) + "\n")
        if not args.quiet:
            mark = "ok " if rec.correct else "err" if rec.error else "no "
            sys.stderr.write(f"[eval] {k}/{n} {rec.variant:<13} {mark} {rec.item_id} "
                             f"conf {rec.confidence:.2f} ({rec.latency_s:.1f} s)\n")
            sys.stderr.flush()

    return progress


def _elicitor(args: argparse.Namespace) -> Any:
    """``elicit(question, answer, evidence)`` with the run's own planner model."""
    from agent.evaluation.elicit import elicit_confidence
    from agent.llm import make_chat_model

    llm = make_chat_model(args.llm)
    return lambda q, a, ev: elicit_confidence(llm, q, a, ev)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run a suite through the agent and print (and optionally save) the report."""
    import os

    items, baselines = _checked(args)
    from agent.cli.main import BadInput

    settings: dict[str, str] = {}
    if args.raw:
        settings["MEDLOOP_CALIBRATION"] = "none"
    if args.temperature is not None:
        if not 0.0 <= args.temperature <= 2.0:
            raise BadInput(f"--temperature must be from 0 to 2, got {args.temperature:g}")
        settings["MEDLOOP_LLM_TEMPERATURE"] = repr(args.temperature)
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        return _run(args, items, baselines)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(args: argparse.Namespace, items: list[Any], baselines: list[str]) -> int:
    """Evaluate, print the report, write the files."""
    from agent.evaluation.harness import evaluate
    from agent.evaluation.runner import read_records
    from agent.nodes.answer import calibration_name

    save = None
    if args.save_calibration:
        from agent.context import AgentContext

        name = calibration_name(args.llm, args.samples)
        save = (Path(args.save_calibration) if args.save_calibration != "home"
                else AgentContext().home_dir / "calibration" / name)
    result = evaluate(
        items, make_graph=_graph_factory(args), suite=args.suite, llm=args.llm,
        baselines=baselines, baseline_limit=args.baseline_limit,  # type: ignore[arg-type]
        repeats=args.repeats, seed=args.seed, fit_fraction=args.fit_fraction,
        target_accuracy=args.target_accuracy, out_dir=args.out, save_calibration_to=save,
        progress=_progress(args) if not args.records else None,
        records=read_records(args.records) if args.records else None,
        elicit=_elicitor(args) if args.elicit else None,
    )
    if args.json:
        sys.stdout.write(json.dumps(result.report, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(_human(result.report) + "\n")
        for f in result.files:
            sys.stdout.write(f"wrote {f}\n")
    return 0
