"""The optimizer's own cost: onnxopt against onnxsim and onnxslim, each in a fresh process.

    python benchmarks/optimizer_cost.py [--model bert_base] [--repeat 1]      # one zoo model
    python benchmarks/optimizer_cost.py --corpus [--only A,B] [--group G] [--repeat 1]

Each tool runs in a fresh subprocess (``benchmarks.peers``): wall time of the tool's work
(imports, load and save included) and peak resident memory (``VmHWM`` of that process).

``--model``: onnxopt's exact pipeline through the PassManager, verified on 4 runs (its default
without --data) and on 8 runs of synthesized inputs, against onnxsim and onnxslim. Writes
``benchmarks/optimizer_cost.md`` and ``.json`` (RESULTS.md includes the table).

``--corpus``: every model of the real-model corpus (``benchmarks/realzoo.py``), as users run
the tools: ``onnxopt optimize IN -o OUT --data DATA.npz`` (cleanup + fusion, every pass verified
in onnxruntime; DATA holds ``--n`` samples, 200 by default, see realzoo for where they come from),
``onnxsim.simplify`` and ``onnxslim.slim`` on the same file, and the drop-in call
``onnxopt optimize IN -o OUT`` with no other option (does it work, does the output keep the
input's dynamic dimensions). Every output is compared with the original on 8 runs of the data
(plus one batch of 8 where the batch is dynamic), onnxruntime graph optimizations off, with
onnxopt's exact criterion (float32 ``atol 1e-5·max(1, max|ref|) + rtol 1e-4·|ref|``, or 4x the
original's own float noise, onnxruntime optimizations on vs off, where wider; integer outputs
bit-equal). Goals (issue #14): onnxopt at most 2x onnxsim's time, no exact pass rolled back,
no changed output. Writes ``benchmarks/OPTIMIZER_COST.md`` and ``.json``; a run over a subset
updates those rows and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, run_all
from onnxopt import zoo
from onnxopt.errors import first_line

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


# --------------------------------------------------------------------------- the corpus

CORPUS_TOOLS = ("onnxopt", "onnxsim", "onnxslim")
CORPUS_MD = ROOT / "benchmarks" / "OPTIMIZER_COST.md"
GOAL_RATIO = 2.0


def _jobs(src: Path, data: Path, work: Path) -> dict[str, dict[str, Any]]:
    out = {t: str(work / f"{t}.onnx") for t in (*CORPUS_TOOLS, "dropin")}
    return {
        "onnxopt": {
            "kind": "onnxopt_cli",
            "argv": ["optimize", str(src), "-o", out["onnxopt"], "--data", str(data),
                     "--report", str(work / "onnxopt.report.json")],
            "output": out["onnxopt"],
        },
        "onnxsim": {"kind": "onnxsim", "input": str(src), "output": out["onnxsim"]},
        "onnxslim": {"kind": "onnxslim", "input": str(src), "output": out["onnxslim"]},
        "dropin": {
            "kind": "onnxopt_cli",
            "argv": ["optimize", str(src), "-o", out["dropin"],
                     "--report", str(work / "dropin.report.json")],
            "output": out["dropin"],
        },
    }  # fmt: skip


def _run(job: dict[str, Any], repeat: int, timeout: float) -> dict[str, Any]:
    """Status, median seconds, largest peak RSS and nodes after, over ``repeat`` runs."""
    import onnx

    results = [peers.run_job(job, timeout) for _ in range(repeat)]
    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        return {"status": results[0]["status"]}
    out = onnx.load(job["output"], load_external_data=False)
    return {
        "status": "ok",
        "seconds": statistics.median(r["seconds"] for r in ok),
        "cpu_s": statistics.median(r["cpu_s"] for r in ok),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "nodes": len(out.graph.node),
    }


def _reference(src: Path, data: Path) -> tuple[Any, list, dict[str, float]]:
    """The comparison runs, the original's outputs on them and its float noise per output."""
    import onnx

    from onnxopt.data import input_specs, load_feeds
    from onnxopt.timing import session
    from onnxopt.verify import compare

    model = onnx.load(str(src), load_external_data=False)
    feeds = load_feeds(data, model, limit=8)
    if all(s.rank and not isinstance(s.shape[0], int) for s in input_specs(model)):
        feeds.runs.append(feeds.batched(8).runs[0])
    runs = [{k: v for k, v in r.items()} for r in feeds.runs]
    ref = _outputs(session(src, threads=2, optimization="disable"), runs)
    fast = _outputs(session(src, threads=2, optimization="all"), runs)
    noise = {k: s.max_abs for k, s in compare(ref, fast).outputs.items()}
    return runs, ref, noise


def _outputs(sess: Any, runs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, r))) for r in runs]


def _equal(path: str, runs: list, ref: list, noise: dict[str, float]) -> str:
    """ "equal", or why not (onnxopt's exact criterion against the original)."""
    from onnxopt.timing import session
    from onnxopt.verify import Exact, compare

    try:
        cand = _outputs(session(path, threads=2, optimization="disable"), runs)
    except Exception as e:  # a written model onnxruntime cannot run is a changed output
        return f"does not run: {first_line(e, 80)}"
    verdict = Exact().check(ref, cand, noise)
    if verdict:
        return "equal"
    return f"differs (max abs {compare(ref, cand).max_abs:.3g})"


def _dims(path: str | Path) -> dict[str, list[str | int]]:
    """Every graph input's and output's dims; a dynamic one as its name or "?"."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    out = {}
    for v in [*g.input, *g.output]:
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        ]
    return out


def _dims_kept(src: Path, out: str) -> bool:
    """Every dim that is dynamic in ``src`` is still dynamic in ``out``."""
    before, after = _dims(src), _dims(out)
    for name, dims in before.items():
        got = after.get(name)
        if got is None or len(got) != len(dims):
            return False
        if any(isinstance(a, str) and isinstance(b, int) for a, b in zip(dims, got)):
            return False
    return True


def _report(path: Path) -> dict[str, Any]:
    """Exact passes rolled back (or sites dropped by bisection) and the verification runs."""
    if not path.exists():
        return {}
    rep = json.loads(path.read_text())
    back = [
        f"{p['name']}: {p['status']}" + (f" ({p['reason'][:160]})" if p.get("reason") else "")
        for p in rep["passes"]
        if p["exact"] and p["status"] in ("rolled back", "error")
    ]
    back += [
        f"{p['name']}: {len(p['dropped_sites'])} sites dropped"
        for p in rep["passes"]
        if p["exact"] and p.get("dropped_sites")
    ]
    kept = [p["name"] for p in rep["passes"] if p["status"] == "kept"]
    return {"rolled_back": back, "kept": kept, "verified_on": rep.get("verified_on", {})}


def corpus_row(entry: Any, n: int, repeat: int, timeout: float) -> dict[str, Any]:
    """Every tool on one corpus entry, its outputs compared with the original."""
    import onnx

    src, data = entry.build(), entry.data(n)
    work = ROOT / "build" / "optimizer_cost" / "corpus" / entry.name
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {
        "name": entry.name,
        "framework": entry.framework,
        "nodes_in": len(onnx.load(str(src), load_external_data=False).graph.node),
        "mb": src.stat().st_size / 1e6,
        "data": f"{n} samples: {entry.data_source}",
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    runs, ref, noise = _reference(src, data)
    for tool, job in _jobs(src, data, work).items():
        r = row[tool] = _run(job, repeat, timeout)
        if r["status"] == "ok":
            r["outputs"] = _equal(job["output"], runs, ref, noise)
        if tool == "dropin" and r["status"] == "ok":
            r["dims_kept"] = _dims_kept(src, job["output"])
    row["onnxopt"].update(_report(work / "onnxopt.report.json"))
    row["dropin"].update(_report(work / "dropin.report.json"))
    return row


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    if r.get("status") != "ok":
        return "fails" if r.get("status", "").startswith(("failed", "crashed")) else "–"
    return "–" if r.get(key) is None else format(r[key], fmt)


def _eq(r: dict[str, Any]) -> str:
    return {"equal": "=", None: "–"}.get(r.get("outputs"), "≠")


def _ratio(t: dict[str, dict[str, Any]], key: str) -> str:
    a, b = t["onnxopt"].get(key), t["onnxsim"].get(key)
    return f"{a / b:.2f}" if a and b else "–"


def corpus_markdown(rows: list[dict[str, Any]]) -> str:
    """The corpus table, its goals and notes on every failure, rollback and changed output."""
    head = [
        "# The optimizer's cost on the real-model corpus",
        "",
        "Generated by `python benchmarks/optimizer_cost.py --corpus` (see its docstring). "
        "Seconds: the tool's whole run in a fresh process, imports, load and save included; "
        "onnxopt = `onnxopt optimize IN -o OUT --data DATA.npz` (cleanup + fusion, every pass "
        "verified in onnxruntime); drop-in = `onnxopt optimize IN -o OUT`. Outputs: `=` equal "
        "to the original within onnxopt's exact criterion, `≠` not (see notes). CPU: user + "
        "system time of the process, every thread; on a shared machine it moves less than "
        "wall time.",
        "",
        "| model | framework | nodes | onnxopt s | onnxsim s | onnxslim s "
        "| onnxopt / onnxsim, wall (CPU) "
        "| peak RSS MB (opt / sim / slim) | nodes after (opt / sim / slim) "
        "| outputs (opt / sim / slim) | exact rolled back | drop-in s, dims kept |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---|",
    ]
    lines, notes = list(head), []
    for row in rows:
        t = {k: row[k] for k in (*CORPUS_TOOLS, "dropin")}
        ratio = f"{_ratio(t, 'seconds')} ({_ratio(t, 'cpu_s')})"
        d = t["dropin"]
        dropin = _cell(d, "seconds", ".1f") + (
            ", kept" if d.get("dims_kept") else ", **lost**" if d.get("status") == "ok" else ""
        )
        lines.append(
            f"| {row['name']} | {row['framework']} | {row['nodes_in']} | "
            + " | ".join(_cell(t[k], "seconds", ".1f") for k in CORPUS_TOOLS)
            + f" | {ratio} | "
            + " / ".join(_cell(t[k], "peak_rss_mb", ".0f") for k in CORPUS_TOOLS)
            + " | "
            + " / ".join(_cell(t[k], "nodes", "d") for k in CORPUS_TOOLS)
            + " | "
            + " / ".join(_eq(t[k]) for k in CORPUS_TOOLS)
            + f" | {len(t['onnxopt'].get('rolled_back', []))} | {dropin} |"
        )
        notes += _notes(row)
    return "\n".join(lines + ["", *_goals(rows), "", "## Notes", "", *(notes or ["None."])]) + "\n"


def _notes(row: dict[str, Any]) -> list[str]:
    out = []
    if row.get("earlier_run"):
        out.append(
            f"- {row['name']}: row from an earlier run ({row.get('when')}), before peak RSS was "
            "measured per process (its RSS figures were wrong and are not shown)"
        )
    for tool in (*CORPUS_TOOLS, "dropin"):
        r = row[tool]
        if r.get("status") != "ok":
            out.append(f"- {row['name']}, {tool}: {r.get('status')}")
        elif r.get("outputs") != "equal":
            out.append(f"- {row['name']}, {tool}: outputs {r.get('outputs')}")
        for why in r.get("rolled_back", []):
            out.append(f"- {row['name']}, {tool}: rolled back {why}")
    return out


def _goals(rows: list[dict[str, Any]]) -> list[str]:
    opt = [r["onnxopt"] for r in rows]
    timed = [r for r in rows if r["onnxopt"].get("seconds") and r["onnxsim"].get("seconds")]
    slow = [
        r["name"] for r in timed if r["onnxopt"]["seconds"] > GOAL_RATIO * r["onnxsim"]["seconds"]
    ]
    back = sum(len(o.get("rolled_back", [])) for o in opt)
    changed = [r["name"] for r in rows if r["onnxopt"].get("outputs") not in ("equal", None)]
    failed = [r["name"] for r in rows if r["onnxopt"].get("status") != "ok"]
    drop = [r["dropin"] for r in rows]
    return [
        "## Goals",
        "",
        f"- onnxopt at most {GOAL_RATIO:g}x onnxsim's time: {len(timed) - len(slow)} of "
        f"{len(timed)} models" + (f" (slower: {', '.join(slow)})" if slow else ""),
        f"- exact passes rolled back: {back}; onnxopt failed on: {', '.join(failed) or 'none'}",
        f"- changed outputs (onnxopt): {len(changed)}"
        + (f" ({', '.join(changed)})" if changed else ""),
        f"- `onnxopt optimize IN -o OUT` works on {sum(d.get('status') == 'ok' for d in drop)} of "
        f"{len(rows)} models and keeps the dynamic dims on "
        f"{sum(bool(d.get('dims_kept')) for d in drop)}",
    ]


def compile_sources() -> None:
    """Byte-compile onnxopt as ``pip install`` does: with PYTHONDONTWRITEBYTECODE set (as on
    these machines) a source checkout otherwise recompiles ~90 modules in every fresh process."""
    import compileall

    for d in ("onnxopt", "passes"):
        compileall.compile_dir(str(ROOT / d), quiet=1)


def corpus(args: argparse.Namespace) -> int:
    """Run the corpus mode; rows of earlier runs are kept unless --fresh."""
    from benchmarks import realzoo

    compile_sources()
    chosen = realzoo.select(args.only, args.group)
    store = CORPUS_MD.with_suffix(".json")
    rows = (
        {}
        if args.fresh or not store.exists()
        else {r["name"]: r for r in json.loads(store.read_text())}
    )
    for e in chosen:
        print(f"{e.name} ...", file=sys.stderr, flush=True)
        rows[e.name] = corpus_row(e, args.n, args.repeat, args.timeout)
        store.write_text(json.dumps(list(rows.values()), indent=1))
    order = [e.name for e in realzoo.entries()]
    ordered = sorted(
        rows.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else 1e9
    )
    CORPUS_MD.write_text(corpus_markdown(ordered))
    print(CORPUS_MD.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bert_base", choices=zoo.NAMES)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "optimizer_cost.md")
    ap.add_argument("--corpus", action="store_true", help="every real-corpus model instead")
    ap.add_argument("--only", help="--corpus: comma-separated entry names")
    ap.add_argument("--group", help="--corpus: comma-separated realzoo groups")
    ap.add_argument("--n", type=int, default=200, help="--corpus: samples in --data")
    ap.add_argument("--fresh", action="store_true", help="--corpus: forget earlier rows")
    args = ap.parse_args(argv)
    if args.corpus:
        return corpus(args)
    compile_sources()
    rows = measure(args.model, args.repeat, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args.model, rows))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
