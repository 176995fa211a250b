"""What the offline experts can answer on real images, without the planner, cross-fitted by image.

The agent's answers on real VQA-RAD items come from one expert, ``case_answer`` (the library's
yes/no answer model, its trained heads for "is this an MRI?"-type questions, and the
neighbours' vote for open questions); the planner copies (or fails to copy) what it says. This
script scores that expert alone on EVERY dev item, the way ``medloop eval --library-folds``
builds its libraries (5 folds by image: each item answered by a library, heads and answer model
that never saw its image), and reports it with the agent's own report code: accuracy closed /
open / per category / per organ beside the majority answer of the fitting folds, the blank-image
(the image vector replaced by the library's mean: question only) and shuffled-image variants,
and the confidence (the expert's score) calibrated per domain, cross-fitted: ECE (15 bins) with
its noise floor, Brier, AURC, and the selective accuracy at the threshold for
``--target-accuracy``.

It is the ceiling of a planner that copies its evidence perfectly and abstains when the expert
has no answer; the gap to ``medloop eval`` on the same items is the planner's.

Run: ``nice .venv/bin/python bench/real_answers.py [--items PATH] [--json]`` (the fold libraries
are built once under ``$MEDLOOP_HOME/eval-libraries/``, shared with ``medloop eval``; image
vectors come from the library of every image, so nothing is embedded twice).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.cli.eval import _human
from agent.context import AgentContext
from agent.evaluation.folds import image_keys
from agent.evaluation.harness import evaluate
from agent.evaluation.items import EvalItem
from agent.evaluation.libraries import every_image_vectors, fold_libraries
from agent.evaluation.readers import load_suite
from agent.evaluation.runner import Record
from agent.evaluation.scoring import grade, open_scores
from agent.trust.calibration import domain_of
from retrievers.answer_model import load_answer_model
from retrievers.case_answers import CaseBank, is_yesno_question, unreliable_kind
from retrievers.embedders import shared_minilm
from retrievers.heads import load_heads
from retrievers.question_kinds import load_reliability
from retrievers.reliability import expert_answer
from retrievers.vqa_library import open_case_library

DEFAULT_ITEMS = Path(__file__).resolve().parents[2] / "shared/data/vqa_rad_dev/items.jsonl"


def _relative(image: str, base: Path) -> str:
    return Path(image).resolve().relative_to(base.resolve()).as_posix()


def _record(item: EvalItem, variant: str, answer: str, score: float) -> Record:
    g = grade(answer, item.answer, item.answer_type, options=item.options,
              tolerance=item.tolerance)
    scores = open_scores(answer, item.answer) if item.answer_type == "open" else None
    return Record(item_id=item.id, variant=variant, repeat=0, question=item.prompt,
                  reference=item.answer, answer_type=item.answer_type, answer=answer,
                  parsed=g.parsed, correct=bool(answer) and g.correct, confidence=score,
                  raw_confidence=score, abstained=not answer, latency_s=0.0,
                  tool_calls=1, tools=["case_answer"], meta=dict(item.meta),
                  exact_match=scores.exact if scores else None,
                  token_recall=scores.token_recall if scores else None,
                  item_images=image_keys(item), domain=domain_of(item.images))


def run(items_file: Path, folds: int, seed: int,
        withhold: bool = True) -> tuple[list[EvalItem], list[Record]]:
    """Every item under the expert, with blank and shuffled images, cross-fitted by image.

    With ``withhold``, an answer of a kind the fold library's own table
    (``retrievers.question_kinds``) calls unreliable is withheld, as ``case_answer`` does.
    """
    items = load_suite(str(items_file))
    home = AgentContext.from_env().home_dir / "eval-libraries"
    library_of = fold_libraries(items_file, items, folds, seed, home,
                                progress=lambda m: print(f"# {m}", file=sys.stderr))
    vectors = every_image_vectors(library_of)
    base = items_file.parent
    qvecs = shared_minilm().embed_texts([it.prompt for it in items])
    rng = np.random.default_rng(seed)
    names = sorted(vectors)
    records: list[Record] = []
    for path in sorted(set(library_of.values())):
        lib = open_case_library(path)
        try:
            bank = CaseBank.from_library(lib)
            heads, model, emb = load_heads(path), load_answer_model(path), lib.image_embedder.name
            rel = load_reliability(path) if withhold else None
        finally:
            lib.close()
        mean = bank.mean if bank.mean is not None else np.zeros_like(next(iter(vectors.values())))
        for i, it in enumerate(items):
            if library_of[it.id] != path:
                continue
            own = _relative(str(it.images[0]), base)
            other = own
            while other == own:
                other = names[int(rng.integers(len(names)))]
            for variant, vec in (("full", vectors[own]), ("blank", mean),
                                 ("shuffled", vectors[other])):
                answer, score, method = expert_answer(bank, heads, model, emb, it.prompt,
                                                      qvecs[i], vec)
                if answer and unreliable_kind(rel, bank, qvecs[i], is_yesno_question(it.prompt),
                                              it.prompt, method):
                    answer, score = "", 0.0
                records.append(_record(it, variant, answer, score))
    return items, records


def main() -> int:
    """Print (or --json) the report of the expert alone on every dev item."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=Path, default=DEFAULT_ITEMS)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-accuracy", type=float, default=0.85)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the report, records and plots here")
    ap.add_argument("--no-withhold", action="store_true",
                    help="answer every kind of question (as before the per-kind table)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    items, records = run(args.items, args.folds, args.seed, withhold=not args.no_withhold)

    def no_graph() -> tuple[Any, Any]:
        raise RuntimeError("records are given; nothing runs the agent")

    result = evaluate(items, make_graph=no_graph, suite=str(args.items),
                      llm="case_answer alone (no planner)",
                      baselines=("blank", "shuffled", "majority"), folds=args.folds,
                      seed=args.seed, target_accuracy=args.target_accuracy, records=records,
                      out_dir=args.out)
    if args.json:
        print(json.dumps(result.report, indent=1, default=str))
    else:
        print(_human(result.report))
        print(f"# {len(items)} items in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
