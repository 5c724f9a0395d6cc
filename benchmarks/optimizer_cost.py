"""The optimizer's own cost: onnxopt's exact pipeline against onnxsim and onnxslim on bert_base.

    python -m benchmarks.optimizer_cost [--model bert_base] [--repeat 1]

Each tool runs in a fresh subprocess (``benchmarks.peers``): wall time of the tool's work
(imports included) and peak resident memory (``ru_maxrss`` of that process). onnxopt's time
includes its onnxruntime verification of every pass, on 4 runs (its default without --data)
and on 8 runs of synthesized inputs (ids in 0..30522).
With ``--repeat N`` the median time and the largest peak are reported.
Writes ``benchmarks/optimizer_cost.md`` and ``.json`` (RESULTS.md includes the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, run_all
from onnxopt import zoo

#: onnxopt verifies on 4 runs when no --data is given (onnxopt.data.get_feeds); the feeds file
#: holds 8, and the second row shows what verifying on all of them costs
TOOLS = [
    (
        "onnxopt (cleanup, fusion; verified on 4 runs, the default)",
        {"kind": "onnxopt", "passes": run_all.EXACT, "options": {}, "lossy": [], "verify_runs": 4},
    ),
    (
        "onnxopt (cleanup, fusion; verified on 8 runs)",
        {"kind": "onnxopt", "passes": run_all.EXACT, "options": {}, "lossy": [], "verify_runs": 8},
    ),
    ("onnxsim", {"kind": "onnxsim"}),
    ("onnxslim", {"kind": "onnxslim"}),
]


def measure(model: str = "bert_base", repeat: int = 1, timeout: float = 900.0) -> list[dict]:
    """One dict per tool: status, seconds (median), peak_rss_mb (max), output MB, nodes."""
    import onnx

    work = ROOT / "build" / "optimizer_cost" / model
    work.mkdir(parents=True, exist_ok=True)
    src = zoo.build(model, "torchscript")
    feeds, _, _ = run_all.write_feeds(model, work)
    nodes_in = len(onnx.load(str(src), load_external_data=False).graph.node)
    rows = []
    for label, base in TOOLS:
        job = dict(
            base,
            input=str(src),
            feeds=str(feeds),
            output=str(work / f"{run_all._slug(label)}.onnx"),
        )
        results = [peers.run_job(job, timeout) for _ in range(repeat)]
        ok = [r for r in results if r["status"] == "ok"]
        row = {
            "tool": label,
            "status": ok[0]["status"] if ok else results[0]["status"],
            "input_mb": src.stat().st_size / 2**20,
            "nodes_in": nodes_in,
        }
        if ok:
            out = Path(job["output"])
            row.update(
                seconds=statistics.median(r["seconds"] for r in ok),
                peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                output_mb=out.stat().st_size / 2**20,
                nodes_out=len(onnx.load(str(out), load_external_data=False).graph.node),
            )
        rows.append(row)
    return rows


def markdown(model: str, rows: list[dict]) -> str:
    lines = [
        f"# Optimizer cost on {model}",
        "",
        f"Input: {rows[0]['input_mb']:.0f} MB, {rows[0]['nodes_in']} nodes. Each tool in a "
        "fresh subprocess; time includes imports and (onnxopt) onnxruntime verification of "
        "every pass; peak = the process's maximum resident set.",
        "",
        "| tool | status | seconds | peak RSS MB | nodes after | output MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['status'][:80]} | {r.get('seconds', float('nan')):.1f} "
            f"| {r.get('peak_rss_mb', float('nan')):.0f} | {r.get('nodes_out', '-')} "
            f"| {r.get('output_mb', float('nan')):.0f} |"
        )
    ours = rows[0].get("seconds")
    peers_s = [r["seconds"] for r in rows if "seconds" in r and not r["tool"].startswith("onnxopt")]
    if ours is not None and peers_s:
        verdict = "meets" if ours <= min(peers_s) else "misses"
        lines += [
            "",
            f"Goal (no slower than either peer): {verdict} it — onnxopt {ours:.1f} s "
            f"vs fastest peer {min(peers_s):.1f} s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bert_base", choices=zoo.NAMES)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "optimizer_cost.md")
    args = ap.parse_args(argv)
    rows = measure(args.model, args.repeat, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args.model, rows))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
