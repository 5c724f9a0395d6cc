"""Differential fuzzing, the long run: random graphs through the exact pipeline, and through
onnxsim and onnxslim, judged on inputs verification never saw.

Each seed's graph (``tests.fuzz.generator``) is optimized by ``cleanup,fusion`` for each target
(``onnx``; ``onnxruntime`` adds the contrib fusions), verified on positive inputs, then
compared with the original on other seeds, zeros, negatives, large values and NaN/Inf where
the motifs allow, and other batch sizes for dynamic graphs (``tests.fuzz.oracle``). The same
graphs go through onnxsim and onnxslim with their defaults, each in its own long-lived
subprocess (restarted when it aborts), and are judged the same way.

Counts: per status (``optimized``, ``unchanged``, ``changed``, ``invalid``, ``crashed``,
``refused``, ``not_runnable``), by pass (kept, rolled back, raised, culprit of a bad case) and
by motif; for the peers, per status. ``--minimize K`` shrinks up to K bad cases of ours and
writes them under ``build/fuzz/failures/`` (to be moved into ``tests/fuzz/regressions/``
once the pass is fixed).

Usage::

    python benchmarks/fuzz.py [--n 20000] [--seed 0] [--jobs 2] [--targets onnx,onnxruntime]
        [--peers onnxsim,onnxslim] [--minimize 5] [--json build/fuzz.json]
    python benchmarks/fuzz.py --merge build/fuzz/part*.json  # runs over seed ranges, summed
        [--markdown build/fuzz.md]  # the tables as markdown
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fuzz_peers import PEERS, PeerWorker

DEFAULT_JSON = ROOT / "build" / "fuzz.json"
FAILURES = ROOT / "build" / "fuzz" / "failures"
STATUSES = ("optimized", "unchanged", "changed", "invalid", "crashed", "refused", "not_runnable")


def _quiet() -> None:
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    logging.getLogger("onnxopt").setLevel(logging.ERROR)


def run_chunk(seeds: list[int], targets: list[str], peers: list[str]) -> list[dict[str, Any]]:
    """Generate, optimize and judge every seed (run in a worker process)."""
    from tests.fuzz.generator import generate
    from tests.fuzz.oracle import Outcome, check, judge, runnable

    _quiet()
    workers = {p: PeerWorker(p) for p in peers}
    records = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        for seed in seeds:
            case = generate(seed)
            rec: dict[str, Any] = {
                "seed": seed,
                "motifs": case.motifs,
                "config": config_of(case),
                "describe": case.describe(),
                "ours": {t: asdict(check(case, t)) for t in targets},
                "peers": {},
            }
            if peers and not runnable(case):
                src = Path(tmp) / f"{seed}.onnx"
                src.write_bytes(case.model.SerializeToString())
                for name, worker in workers.items():
                    t0 = time.perf_counter()
                    out, why = worker.run(src)
                    res = Outcome("optimized", name, seconds=0.0)
                    if out is None:
                        res.status = "crashed" if why.startswith("aborted") else "refused"
                        res.detail = why
                    else:
                        judge(case, out, res)
                        same = [n.op_type for n in out.graph.node] == [
                            n.op_type for n in case.model.graph.node
                        ]
                        if same and res.status == "optimized":
                            res.status = "unchanged"
                    res.seconds = time.perf_counter() - t0
                    rec["peers"][name] = asdict(res)
            records.append(rec)
    for w in workers.values():
        w.close()
    return records


def config_of(case: Any) -> str:
    """The graph's generation settings: opset, float type, static or dynamic shapes."""
    return f"opset {case.opset}, {case.float_type}, {'dynamic' if case.dynamic else 'static'}"


def run(n: int, seed: int, jobs: int, targets: list[str], peers: list[str]) -> list[dict]:
    seeds = list(range(seed, seed + n))
    chunk = 50
    parts = [seeds[i : i + chunk] for i in range(0, n, chunk)]
    records: list[dict] = []
    t0 = time.perf_counter()
    if jobs <= 1:
        for p in parts:
            records += run_chunk(p, targets, peers)
            _progress(len(records), n, t0)
        return records
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for recs in pool.map(run_chunk, parts, [targets] * len(parts), [peers] * len(parts)):
            records += recs
            _progress(len(records), n, t0)
    return records


def _progress(done: int, n: int, t0: float) -> None:
    print(f"  {done}/{n} graphs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# summary


def summarize(records: list[dict], targets: list[str], peers: list[str], seconds: float) -> dict:
    out: dict[str, Any] = {"graphs": len(records), "seconds": round(seconds, 1)}
    for t in targets:
        outs = [r["ours"][t] for r in records]
        out[t] = _target_summary(records, outs, t)
    out["peers"] = {}
    for p in peers:
        res = [r["peers"][p] for r in records if p in r["peers"]]
        reasons = Counter(
            _reason(o) for o in res if o["status"] in ("changed", "invalid", "crashed")
        )
        out["peers"][p] = {
            "counts": {
                k: sum(o["status"] == k for o in res) for k in STATUSES if k != "not_runnable"
            },
            "judged": len(res),
            "seconds": round(sum(o["seconds"] for o in res), 1),
            "top_reasons": reasons.most_common(8),
        }
    return out


def _target_summary(records: list[dict], outs: list[dict], target: str) -> dict:
    counts = {k: sum(o["status"] == k for o in outs) for k in STATUSES}
    by_pass: dict[str, Counter] = defaultdict(Counter)
    for o in outs:
        for p in o["kept"]:
            by_pass[p]["kept"] += 1
        for p in o["rolled_back"]:
            by_pass[p]["rolled back"] += 1
        for e in o["errors"]:
            by_pass[e.split(":")[0]]["raised"] += 1
        if o["status"] in ("changed", "invalid", "crashed"):
            by_pass[o["culprit"] or "?"]["bad"] += 1
    by_motif: dict[str, Counter] = defaultdict(Counter)
    for r, o in zip(records, outs, strict=True):
        for m in set(r["motifs"]):
            by_motif[m]["graphs"] += 1
            by_motif[m][o["status"]] += 1
            by_motif[m]["within noise"] += int(o["within_noise"])
            by_motif[m]["rolled back"] += int(bool(o["rolled_back"]))
    by_opset: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for r, o in zip(records, outs, strict=True):
        opset, kind = r["config"].split(", ", 1)  # "opset 17", "float16, dynamic"
        for counter in (by_opset[opset], by_type[kind]):
            counter["graphs"] += 1
            counter[o["status"]] += 1
    bad = [
        {"describe": r["describe"], **{k: o[k] for k in ("status", "culprit", "inputs", "detail")}}
        for r, o in zip(records, outs, strict=True)
        if o["status"] in ("changed", "invalid", "crashed")
    ]
    return {
        "counts": counts,
        "within_noise": sum(o["within_noise"] for o in outs),
        "by_pass": {k: dict(v) for k, v in sorted(by_pass.items())},
        "by_motif": {k: dict(v) for k, v in sorted(by_motif.items())},
        "by_opset": {k: dict(v) for k, v in sorted(by_opset.items(), key=_opset_key)},
        "by_type": {k: dict(v) for k, v in sorted(by_type.items())},
        "bad": bad[:50],
        "seconds": round(sum(o["seconds"] for o in outs), 1),
    }


def _opset_key(item: tuple[str, Any]) -> int:
    """Sort "opset 9" before "opset 13"."""
    return int(item[0].split()[-1])


def _reason(o: dict) -> str:
    """A bad result's reason with tensor names blanked, so that equal reasons count together."""
    if o["status"] == "changed":
        return f"changed on {o['inputs']} inputs"
    return f"{o['status']}: " + re.sub(r"'[^']*'", "'…'", o["detail"])[:90]


def print_summary(s: dict, targets: list[str]) -> None:
    from rich.console import Console

    console = Console(width=160)
    rows = {f"onnxopt --target {t}": s[t]["counts"] for t in targets}
    rows.update({p: ps["counts"] for p, ps in s["peers"].items()})
    title = f"{s['graphs']} random graphs, {s['seconds']} s"
    console.print(_table(title, "tool", STATUSES, rows, missing="-"))
    cols = ("graphs", "optimized", "unchanged", "changed", "invalid", "crashed", "not_runnable")
    for t in targets:
        st = s[t]
        console.print(
            _table(
                f"by pass, --target {t}",
                "pass",
                ("kept", "rolled back", "raised", "bad"),
                st["by_pass"],
            )
        )
        console.print(
            _table(
                f"by motif, --target {t}",
                "motif",
                (*cols, "within noise", "rolled back"),
                st["by_motif"],
            )
        )
        console.print(_table(f"by opset, --target {t}", "opset", cols, st["by_opset"]))
        console.print(_table(f"by type, --target {t}", "type, shapes", cols, st["by_type"]))
        for b in st["bad"]:
            console.print(
                f"[red]{b['status']}[/red] {b['describe']} by {b['culprit']}: {b['detail']}"
            )
    for p, ps in s["peers"].items():
        for reason, n in ps["top_reasons"]:
            console.print(f"{p}: {n} x {reason}", highlight=False)


def markdown_summary(s: dict, targets: list[str]) -> str:
    """The tables of :func:`print_summary` as markdown (for ``--markdown``)."""
    cols = ("graphs", "optimized", "unchanged", "changed", "invalid", "crashed", "not_runnable")
    rows = {f"onnxopt `--target {t}`": s[t]["counts"] for t in targets}
    rows.update({p: ps["counts"] for p, ps in s["peers"].items()})
    out = [f"{s['graphs']:,} random graphs, {s['seconds']:,.0f} s of runs in all.", ""]
    out += _md("tool", STATUSES, rows, missing="-")
    for t in targets:
        st = s[t]
        out += ["", f"### `--target {t}`", ""]
        out += [f"Within the original's own float noise (counted as equal): {st['within_noise']}."]
        out += ["", "By pass:", ""]
        out += _md("pass", ("kept", "rolled back", "raised", "bad"), st["by_pass"])
        out += ["", "By motif (a graph counts under each motif it holds):", ""]
        out += _md("motif", (*cols, "within noise", "rolled back"), st["by_motif"])
        out += ["", "By opset:", ""]
        out += _md("opset", cols, st["by_opset"])
        out += ["", "By float type and shapes:", ""]
        out += _md("type, shapes", cols, st["by_type"])
        out += [
            f"- {b['status']}: {b['describe']} by {b['culprit']}: {b['detail']}" for b in st["bad"]
        ]
    for p, ps in s["peers"].items():
        if ps["top_reasons"]:
            out += ["", f"{p}, most frequent bad results:", ""]
            out += [f"- {n} x {reason}" for reason, n in ps["top_reasons"]]
    return "\n".join(out) + "\n"


def _md(first: str, cols: tuple[str, ...], rows: dict[str, dict], missing: Any = 0) -> list[str]:
    head = [f"| {first} | " + " | ".join(c.replace("_", " ") for c in cols) + " |"]
    head.append("|---|" + "---:|" * len(cols))
    body = []
    for name, counts in rows.items():
        cells = [counts.get(c, missing) for c in cols]
        body.append(
            f"| {name} | "
            + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in cells)
            + " |"
        )
    return head + body


def _table(
    title: str, first: str, cols: tuple[str, ...], rows: dict[str, dict], missing: Any = 0
) -> Any:
    """A rich table: one row per key of ``rows``, one column per count in ``cols``."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first)
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for name, counts in rows.items():
        table.add_row(name, *(str(counts.get(c, missing)) for c in cols))
    return table


def minimize_failures(records: list[dict], targets: list[str], k: int) -> list[Path]:
    """Shrink up to ``k`` bad cases of ours into ``build/fuzz/failures``."""
    from tests.fuzz import minimize as mz
    from tests.fuzz.generator import generate
    from tests.fuzz.oracle import fails_like

    _quiet()
    written = []
    mz.REGRESSIONS = FAILURES
    for r in records:
        for t in targets:
            o = r["ours"][t]
            if o["status"] not in ("changed", "invalid", "crashed") or len(written) >= k:
                continue
            small = mz.minimize(generate(r["seed"]), fails_like(o["status"], t))
            name = f"seed{r['seed']}_{t}_{o['status']}"
            written.append(mz.save(small, name, target=t, passes=o["culprit"], what=o["detail"]))
    return written


def merge(paths: list[Path]) -> tuple[list[dict], float]:
    """The records of earlier runs (e.g. one seed range each, run one after another) and their
    total time; a seed found twice is an error."""
    records: list[dict] = []
    seconds = 0.0
    for path in paths:
        data = json.loads(path.read_text())
        records += data["records"]
        seconds += data["summary"]["seconds"]
    seeds = Counter(r["seed"] for r in records)
    twice = [s for s, k in seeds.items() if k > 1]
    if twice:
        raise SystemExit(f"--merge: seeds {twice[:5]} appear in more than one file")
    return sorted(records, key=lambda r: r["seed"]), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="how many graphs")
    ap.add_argument("--seed", type=int, default=0, help="the first graph's seed")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--targets", default="onnx,onnxruntime")
    ap.add_argument("--peers", default=",".join(PEERS), help="'' for none")
    ap.add_argument("--minimize", type=int, default=0, help="shrink up to K bad cases")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--markdown", type=Path, help="also write the tables as markdown here")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="summarize earlier runs' JSON files instead of running",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    targets = [t for t in args.targets.split(",") if t]
    peers = [p for p in args.peers.split(",") if p]
    t0 = time.perf_counter()
    if args.merge:
        records, seconds = merge(args.merge)
    else:
        records = run(args.n, args.seed, args.jobs, targets, peers)
        seconds = time.perf_counter() - t0
    summary = summarize(records, targets, peers, seconds)
    print_summary(summary, targets)
    if args.markdown:
        args.markdown.write_text(markdown_summary(summary, targets))
    if args.minimize:
        for path in minimize_failures(records, targets, args.minimize):
            print(f"minimized: {path}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    print(f"wrote {args.json}")
    bad = sum(summary[t]["counts"][k] for t in targets for k in ("changed", "invalid", "crashed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
