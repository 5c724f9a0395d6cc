"""Differential fuzzing of the lossy passes: convert-fp16, convert-bf16, quantize-int4 and
quantize-int8 (nearest and AdaRound rounding) on random graphs, judged on held-out inputs (``tests.fuzz.lossy``).

Each seed's graph runs ``cleanup, fusion, <pass>`` under a cosine >= 0.99 budget, verified on
the fuzz verification distribution; the returned model is then run on four held-out runs of
the same distribution, as written and with onnxruntime's graph optimizations on. Bugs: an
invalid model, a NaN/Inf the original does not have, a crash. ``over_budget`` (held-out
cosine below 0.95) is counted apart: a data-dependent pass on an ill-conditioned graph.

Usage::

    python benchmarks/fuzz_lossy.py [--n 500] [--seed 40000] [--json build/fuzz_lossy.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from tests.fuzz.generator import generate
    from tests.fuzz.lossy import BAD, LOSSY, check_lossy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="how many graphs")
    ap.add_argument("--seed", type=int, default=40_000, help="the first graph's seed")
    ap.add_argument("--passes", default=",".join(LOSSY))
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "fuzz_lossy.json")
    args = ap.parse_args(argv)
    ort.set_default_logger_severity(4)
    logging.getLogger("onnxopt").setLevel(logging.ERROR)
    passes = [p for p in args.passes.split(",") if p]
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: Counter = Counter()
    records = []
    t0 = time.perf_counter()
    for i, seed in enumerate(range(args.seed, args.seed + args.n)):
        case = generate(seed)
        for p in passes:
            r = check_lossy(case, p)
            counts[p][r.status] += 1
            seconds[p] += r.seconds
            if r.status in (*BAD, "over_budget"):
                records.append({"seed": seed, "graph": case.describe(), **asdict(r)})
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{args.n} graphs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - t0
    statuses = ["kept", "unchanged", "over_budget", *BAD, "refused", "not_runnable"]
    print(f"{args.n} graphs (seeds {args.seed}..{args.seed + args.n - 1}), {wall:.0f} s\n")
    print("| pass | " + " | ".join(statuses) + " | seconds |")
    print("|---|" + "---:|" * (len(statuses) + 1))
    for p in passes:
        cells = " | ".join(str(counts[p][s]) for s in statuses)
        print(f"| {p} | {cells} | {seconds[p]:.0f} |")
    for r in records:
        print(f"- {r['graph']} [{r['pass_name']}] {r['status']}: {r['detail']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"n": args.n, "seed": args.seed, "seconds": wall, "counts": counts}
    args.json.write_text(json.dumps({**summary, "cases": records}, indent=1))
    return 1 if any(counts[p][s] for p in passes for s in BAD) else 0


if __name__ == "__main__":
    raise SystemExit(main())
