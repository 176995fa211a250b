"""Fuzz the loader with >= 10,000 mutated real files; every case must load or raise IngestError.

Seeds (``tools.ingest.fuzz.seed_files``): pydicom samples covering every decoder path
(uncompressed CT / MR / YBR_FULL_422, JPEG 2000 lossless and lossy, RLE grey and RGB, JPEG-LS,
JPEG baseline YBR), an 8-bit and a 16-bit PNG, a JPEG, and a NIfTI volume plain and gzipped,
plus three PNG decompression bombs. Mutations: byte flips, truncation, inserted junk,
deleted / filled / duplicated spans (``tools.ingest.fuzz.mutate``).

Cases are split across ``--workers`` probe processes (one per core); each case is loaded in a
probe child with a per-case timeout, with the loader's own decoder child below it. Prints the
outcome counts and exits 1 if any case raised a non-IngestError ("uncaught"), killed its probe
("crash") or hung ("hang").

Usage: python bench/fuzz_ingest.py [--cases 10000] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.ingest.fuzz import BAD_OUTCOMES, FuzzReport, cases, png_bombs, run_cases, seed_files

# A panicking Rust codec (pylibjpeg-rle) prints its backtrace to stderr: keep the table readable.
os.environ["RUST_BACKTRACE"] = "0"


def main() -> int:
    """Run the fuzz cases and print the outcome table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=20.0)
    parser.add_argument("--decode-timeout", type=float, default=5.0)
    args = parser.parse_args()

    seeds = seed_files()
    per_worker = -(-args.cases // args.workers)
    shards = [list(cases(seeds, per_worker, seed=args.seed * 1000 + w)) for w in range(args.workers)]
    shards[0] += list(png_bombs().items())
    start = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:  # threads wait; the work is in the probes
        reports = list(pool.map(lambda items: run_cases(
            items, case_timeout_s=args.case_timeout, decode_timeout_s=args.decode_timeout),
            shards))
    elapsed = time.perf_counter() - start
    total = FuzzReport()
    for r in reports:
        total.merge(r)

    print(f"seeds: {', '.join(sorted(seeds))} + {len(png_bombs())} PNG bombs")
    print(f"{total.total} cases in {elapsed:.1f} s on {args.workers} workers "
          f"({total.total / elapsed:.0f} cases/s)\n")
    print("| outcome | cases | share |")
    print("|---|---:|---:|")
    for outcome, n in total.outcomes.most_common():
        print(f"| {outcome} | {n} | {100 * n / total.total:.1f} % |")
    uncaught = sum(n for o, n in total.outcomes.items() if o.startswith("uncaught"))
    if total.ingest_reasons:
        print("\nIngestError (the base class) by problem:\n")
        print("| problem | cases |")
        print("|---|---:|")
        for problem, n in total.ingest_reasons.most_common():
            print(f"| {problem} | {n} |")
    if total.crash_reasons:
        reasons = ", ".join(f"{r}: {n}" for r, n in total.crash_reasons.most_common())
        print(f"\nDecoderCrashedError by cause in the decoder child: {reasons}")
    print(f"\nuncaught exceptions: {uncaught}")
    print(f"probe crashes: {total.outcomes['crash']}")
    print(f"hangs: {total.outcomes['hang']}")
    for label, outcome, detail in total.bad[:20]:
        print(f"  BAD {outcome} {label}: {detail}")
    return 1 if any(o.startswith(BAD_OUTCOMES) for o in total.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
