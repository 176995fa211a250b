"""Bench the planners' tool choice on the checked-in suite (``agent.evaluation.tool_choice``).

For each planner and routing setting, the planner's first think step on every item of
``tests/fixtures/tool_choice/suite.jsonl`` (82 questions over pydicom's DICOMs, the VQA-RAD
fixture JPEGs, phantoms, and no image; off-topic and injection ones among them), run as the
graph runs it; no tool runs. Two baselines come from the same run and need no model: the
router's best tool alone (what routing would choose with no planner) and always
``describe_image`` (the safe look).

Run: ``.venv/bin/python bench/tool_choice.py --llm embedded:qwen2.5-0.5b --route both``
(``--llm`` repeats; ``--route`` default/on/off/both; ``--limit``, ``--ids`` for a subset;
``--out DIR`` writes each run's records as JSON lines). Run one at a time on a shared machine,
with ``--threads 1`` where others are working.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.answer import FINAL_ANSWER_TOOL
from agent.context import AgentContext
from agent.evaluation.tool_choice import (
    ChoiceResult,
    ImageCache,
    ToolChoiceItem,
    item_state,
    judge,
    load_items,
    run_suite,
    summarise,
)
from agent.planner.offer import offered_tools
from agent.planner.route import shared_router
from agent.planner.toolset import default_tools
from tools.store import ImageStore

SUITE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tool_choice" / "suite.jsonl"


def baseline(items: Sequence[ToolChoiceItem], tools: list[Any], images: ImageCache,
             how: str) -> list[ChoiceResult]:
    """A model-free choice per item: the router's best tool, or always ``describe_image``."""
    out = []
    for item in items:
        state = item_state(item, images)
        offer = offered_tools(tools, state["image_refs"], state["evidence"])
        names = [s["function"]["name"] for s in offer]
        if how == "router":
            routed, _ = shared_router(1).route(offer, item.question)
            pick = next((s["function"]["name"] for s in routed
                         if s["function"]["name"] != FINAL_ANSWER_TOOL), FINAL_ANSWER_TOOL)
        else:
            pick = "describe_image" if "describe_image" in names else FINAL_ANSWER_TOOL
        ok, why = judge(item, [pick], names)
        out.append(ChoiceResult(id=item.id, kind=item.kind, question=item.question,
                                called=[pick], correct=ok, reason=why, offered=names,
                                with_evidence=bool(item.evidence),
                                forbidden_called=sorted({pick} & item.forbidden)))
    return out


def _cell(acc: dict[str, Any]) -> str:
    if not acc["n"]:
        return "-"
    return f"{acc['accuracy']:.2f} ({acc['right']}/{acc['n']})"


def row(label: str, routing: str, results: list[ChoiceResult], extra: str = "") -> str:
    """One markdown table row."""
    s = summarise(results)
    by = s["by_kind"]
    return (f"| {label} | {routing} | {_cell(s['overall'])} | {_cell(by['tool'])} | "
            f"{_cell(by['no_tool'])} | {_cell(by['refuse'])} | {_cell(s['with_evidence'])} | "
            f"{s['forbidden_calls']} | {s['malformed']} | {extra} |")


HEADER = ("| planner | routing | accuracy | tool items | no-tool items | refusals | "
          "evidence listed | forbidden calls | malformed | seconds per step (first; p50) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---|")


def planner(spec: str, threads: int | None, home: Path, native: bool | None,
            examples: int | None, catalogue: bool = True) -> Any:
    """The chat model for ``spec``; an embedded one with the native/examples settings asked."""
    from typing import ClassVar

    from agent.llm import make_chat_model
    from agent.llm.embedded import EmbeddedChatModel

    class OfferOnly(EmbeddedChatModel):
        """Describes only the offered tools, as before the catalogue (the baseline)."""

        reads_tool_catalogue: ClassVar[bool] = False

    llm = make_chat_model(spec, threads=threads, home=home)
    if isinstance(llm, EmbeddedChatModel):
        if not catalogue:
            llm = OfferOnly(**llm.model_dump())
        update: dict[str, Any] = {}
        if native is not None:
            update["native_tools"] = native
        if examples is not None:
            update["examples_version"] = examples
        llm = llm.model_copy(update=update)
    return llm


def describe(spec: str, llm: Any) -> str:
    """The planner as the table names it: the spec, and for an embedded one its settings."""
    from agent.llm.embedded import EmbeddedChatModel

    if not isinstance(llm, EmbeddedChatModel):
        return spec
    native = {None: "auto", True: "native", False: "medloop"}[llm.native_tools]
    shown = "catalogue" if llm.reads_tool_catalogue else "offer only"
    return f"{spec} [{native} calls, examples v{llm.examples_version or 'newest'}, {shown}]"


def main() -> None:
    """Parse arguments, run the planners, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", action="append", default=[],
                    help="planner spec (repeat): embedded:NAME, gguf:PATH, openai:...")
    ap.add_argument("--route", choices=("default", "on", "off", "both"), default="default",
                    help="routing: the planner's default, on (2 tools), off, or both")
    ap.add_argument("--native", choices=("default", "on", "off", "both"), default="default",
                    help="embedded planners: the chat template's own tool-call format (on), "
                         "medloop's text protocol (off), the catalogue's choice, or both")
    ap.add_argument("--examples", type=int, default=None,
                    help="embedded planners: embedded_examples version (default: catalogue's)")
    ap.add_argument("--no-catalogue", action="store_true",
                    help="embedded planners: describe only the offered tools (the prompt then "
                         "changes with the offer), not the agent's whole catalogue")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--suite", default=str(SUITE))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ids", default="", help="comma-separated item ids to run")
    ap.add_argument("--half", choices=("even", "odd"), default=None,
                    help="every other item: tune on one half, report the other as held out")
    ap.add_argument("--out", default=None, help="folder for records (JSON lines per run)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()

    items = load_items(args.suite)
    if args.ids:
        wanted = set(args.ids.split(","))
        items = [i for i in items if i.id in wanted]
    if args.half:
        items = items[(args.half == "odd")::2]
    items = items[: args.limit] if args.limit else items
    base_ctx = AgentContext.from_env(checkpoint=None)
    store = ImageStore(Path(tempfile.mkdtemp(prefix="medloop-toolchoice-")))
    images = ImageCache(store, Path(args.suite).resolve().parent)
    tools = default_tools(base_ctx, store)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"suite: {len(items)} items; tools: {', '.join(t.name for t in tools)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    lines = [HEADER]
    for how, label in (("router", "router alone (no planner)"),
                       ("describe", "always describe_image")):
        lines.append(row(label, "-", baseline(items, tools, images, how), "0"))
    routes: dict[str, list[int | None]] = {"default": [None], "on": [2], "off": [0],
                                           "both": [2, 0]}
    native_runs: dict[str, list[bool | None]] = {"default": [None], "on": [True],
                                                 "off": [False], "both": [True, False]}
    settings, natives = routes[args.route], native_runs[args.native]
    runs = [(spec, route, nat) for spec in args.llm for route in settings for nat in natives]
    for spec, route, nat in runs:
        llm = planner(spec, args.threads, base_ctx.home_dir, nat, args.examples,
                      catalogue=not args.no_catalogue)
        ctx = replace(base_ctx, llm=llm, route_tools=route, llm_threads=args.threads)
        label = describe(spec, llm)

        def progress(r: ChoiceResult) -> None:
            if not args.quiet:
                mark = {True: "ok", False: "--", None: "  "}[r.correct]
                print(f"  [{mark}] {r.elapsed_s:6.1f}s {r.id:28s} {'+'.join(r.called):24s}"
                      f" {r.reason}", flush=True)

        print(f"{label}, routing {route}:", flush=True)
        t0 = time.perf_counter()
        results = run_suite(items, ctx, tools, images, progress)
        wall = time.perf_counter() - t0
        times = sorted(r.elapsed_s for r in results[1:]) or [0.0]
        timing = f"{results[0].elapsed_s:.1f}; {times[len(times) // 2]:.1f}"
        routing = {None: "default", 0: "off"}.get(route, f"on ({route})")
        lines.append(row(label, routing, results, timing))
        print(f"  wall {wall:.0f} s, load average now {os.getloadavg()[0]:.2f}\n")
        if out:
            name = f"{label.replace(':', '_').replace('/', '_').replace(' ', '')}" \
                   f".route{route}.jsonl"
            with (out / name).open("w") as f:
                for r in results:
                    f.write(json.dumps(r.as_dict()) + "\n")
    print("\n".join(lines))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {rss:.0f} MB; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
