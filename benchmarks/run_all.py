"""One command, one run: every onnxopt pipeline beside its peers on the zoo models.

    python -m benchmarks.run_all            # full run (~30 min on 2 cores) -> benchmarks/
    python -m benchmarks.run_all --quick    # digits_resnet + bert_small, ~3 min -> build/quick/

For each model: the original (torchscript export) is the baseline; every optimizer writes a
model in a fresh subprocess (its time and peak RSS are recorded; a failure, timeout or missing
package is a row saying so). Each output is then benchmarked with ``onnxopt.bench`` (batch 1,
one intra-op thread, a fresh subprocess per model) and scored:

- digits: top-1 accuracy (%) on the 450-image test split (the optimizers learn and verify on
  256 training images, never on the test split);
- resnet18 / mobilenetv2 (random weights): top-1 agreement (%) with the original on 16 inputs;
- BERT: cosine similarity (x100) of ``last_hidden_state`` with the original on 8 inputs.

Outputs: ``RESULTS.md`` (a table per model), ``results.json`` and a Pareto plot per model
(``plots/<model>.png``: median latency against the metric, the frontier drawn).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers
from onnxopt import zoo

logger = logging.getLogger("run_all")

FULL = ("digits_resnet", "resnet18", "mobilenetv2", "bert_small", "bert_base")
QUICK = ("digits_resnet", "bert_small")
EXACT = ["cleanup", "fusion"]
PRUNE = {"prune": {"ratio": 0.5}}
BUDGETS = {
    "digits": {"max_accuracy_drop": 1.0},
    "image": {"min_cosine": 0.98},
    "bert": {"min_cosine": 0.99},
}
BERT_SHAPE = {"bert_small": (4, 256), "bert_base": (12, 768)}


@dataclass
class Row:
    model: str
    variant: str
    tool: str
    status: str = "ok"
    path: str = ""
    p50_ms: float | None = None
    p90_ms: float | None = None
    speedup: float | None = None
    size_mb: float | None = None
    macs: int | None = None
    metric: float | None = None
    opt_s: float | None = None
    opt_peak_mb: float | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- feeds and metric


def _inputs(name: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    return [zoo.example_inputs(name, 1, seed=seed + i) for i in range(n)]


def write_feeds(name: str, work: Path) -> tuple[Path, list[dict[str, np.ndarray]], Any]:
    """(feeds .npz the optimizers learn from, evaluation runs, labels or None)."""
    kind = zoo.spec(name).kind
    out = work / "feeds.npz"
    if kind == "digits":
        d = zoo.digits_data()
        x, y = d["X_train"][:256], d["y_train"][:256]
        np.savez(out, input=x.reshape(8, 32, 1, 8, 8), labels=y.reshape(8, 32))
        return out, [{"input": d["X_test"]}], d["y_test"]
    runs = _inputs(name, 8, seed=100)
    np.savez(out, **{k: np.stack([r[k] for r in runs]) for k in runs[0]})
    return out, _inputs(name, 16 if kind == "image" else 8, seed=1000), None


def outputs(path: str, runs: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """First output of every run (onnxruntime, all graph optimizations, two threads)."""
    from onnxopt.timing import session

    sess = session(path, threads=2)
    return [sess.run(None, r)[0] for r in runs]


def metric(name: str, outs: list[np.ndarray], ref: list[np.ndarray], labels: Any) -> float:
    kind = zoo.spec(name).kind
    if kind == "digits":
        return 100.0 * float((outs[0].argmax(-1) == labels).mean())
    if kind == "image":
        return 100.0 * float(
            np.mean([o.argmax(-1) == r.argmax(-1) for o, r in zip(outs, ref, strict=True)])
        )
    a = np.concatenate([o.ravel() for o in outs]).astype(np.float64)
    b = np.concatenate([r.ravel() for r in ref]).astype(np.float64)
    return 100.0 * float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


METRIC_NAME = {"digits": "test accuracy %", "image": "top-1 agreement %", "bert": "cosine x100"}


# --------------------------------------------------------------------------- the jobs


def jobs(name: str, src: Path, feeds: Path, work: Path, quick: bool) -> list[tuple[str, str, dict]]:
    """(variant, tool, job) for every optimizer run on ``name``."""
    kind = zoo.spec(name).kind
    budget = BUDGETS[kind]

    def opt(label: str, passes: list[str], options: dict | None = None) -> tuple[str, str, dict]:
        lossy = [p for p in passes if p not in EXACT]
        return (
            label,
            "onnxopt",
            {
                "kind": "onnxopt",
                "passes": passes,
                "options": options or {},
                "budget": budget,
                "lossy": lossy,
                "feeds": str(feeds),
            },
        )

    out: list[tuple[str, str, dict]] = [
        opt("exact", EXACT),
        opt("exact + int8", EXACT + ["quantize-int8"]),
    ]
    if kind != "bert" or not quick:
        out += [
            opt("exact + prune 50%", EXACT + ["prune"], PRUNE),
            opt("prune + distill + int8", EXACT + ["prune", "distill", "quantize-int8"], PRUNE),
        ]
    out += [
        ("simplify", "onnxsim", {"kind": "onnxsim"}),
        ("slim", "onnxslim", {"kind": "onnxslim"}),
        ("fuse + eliminate", "onnxoptimizer", {"kind": "onnxoptimizer"}),
    ]
    calibrators = ["MinMax", "Percentile", "Entropy"]
    if quick or name == "bert_base":
        calibrators = ["MinMax", "Percentile"]
    out += [
        (
            f"int8 static ({c})",
            "ort quantize_static",
            {"kind": "ort_quant", "calibrator": c, "feeds": str(feeds)},
        )
        for c in calibrators
    ]
    if kind == "bert":
        heads, hidden = BERT_SHAPE[name]
        out.append(
            (
                "bert fusions",
                "ort transformers",
                {"kind": "ort_transformers", "heads": heads, "hidden": hidden},
            )
        )
    else:
        out.append(
            ("prune 50%", "torch-pruning", {"kind": "torch_pruning", "model": name, "ratio": 0.5})
        )
    for i, (label, _tool, job) in enumerate(out):
        job.update(input=str(src), output=str(work / f"{i:02d}_{_slug(label)}.onnx"))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


# --------------------------------------------------------------------------- one model


def run_model(name: str, work: Path, *, quick: bool, runs: int, timeout: float) -> list[Row]:
    from onnxopt.bench import bench
    from onnxopt.model import load_model
    from onnxopt.summary import ModelSummary

    work.mkdir(parents=True, exist_ok=True)
    src = zoo.build(name, "torchscript")
    feeds, eval_runs, labels = write_feeds(name, work)
    kind = zoo.spec(name).kind
    ref = outputs(str(src), eval_runs)
    rows = [Row(name, "original (torchscript export)", "-", path=str(src))]
    for label, tool, job in jobs(name, src, feeds, work, quick):
        logger.info("%s: %s %s", name, tool, label)
        res = peers.run_job(job, timeout)
        row = Row(
            name,
            label,
            tool,
            status=res["status"],
            opt_s=res.get("seconds"),
            opt_peak_mb=res.get("peak_rss_mb"),
            notes=list(res.get("notes") or []),
        )
        if row.status == "ok":
            row.path = job["output"]
        rows.append(row)
    bench_kw = dict(
        runs=runs,
        warmup=max(3, runs // 10),
        threads=1,
        batch=None,
        int_range=(0, 30522) if kind == "bert" else None,
    )
    base_p50 = None
    for row in rows:
        if not row.path:
            continue
        try:
            row.metric = metric(name, outputs(row.path, eval_runs), ref, labels)
            (b,) = bench([row.path], **bench_kw)
            row.p50_ms, row.p90_ms, row.size_mb = b.p50, b.p90, b.file_bytes / 2**20
            base_p50 = base_p50 or b.p50
            row.speedup = base_p50 / b.p50
            row.macs = ModelSummary.of(load_model(row.path, check=False)).flops
        except Exception as e:
            row.status = f"does not run: {type(e).__name__}: {str(e).strip()[:150]}"
    return _best_calibrator(rows)


def _best_calibrator(rows: list[Row]) -> list[Row]:
    """Keep onnxruntime's best calibrator (highest metric, then lowest latency) as one row."""
    q = [r for r in rows if r.tool == "ort quantize_static"]
    ok = [r for r in q if r.status == "ok" and r.metric is not None]
    if not q:
        return rows
    best = max(ok, key=lambda r: (round(r.metric, 2), -(r.p50_ms or 1e9))) if ok else q[0]
    best.notes.append(
        "best of "
        + ", ".join(
            f"{r.variant.split('(')[-1].rstrip(')')}: "
            + (f"{r.metric:.2f}" if r.metric is not None else r.status[:40])
            for r in q
        )
    )
    best.variant = "int8 static (best calibrator)"
    return [r for r in rows if r not in q or r is best]


# --------------------------------------------------------------------------- outputs


def pareto(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both latency (lower) and metric (higher)."""
    pts = sorted(
        (r for r in rows if r.p50_ms is not None and r.metric is not None),
        key=lambda r: (r.p50_ms, -r.metric),
    )
    front, best = [], -np.inf
    for r in pts:
        if r.metric > best:
            front.append(r)
            best = r.metric
    return front


def plot(name: str, rows: list[Row], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.p50_ms is not None and r.metric is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"onnxopt": "tab:blue", "-": "black"}
    front = pareto(pts)
    for r in pts:  # every point drawn; labels on the frontier and the original (see RESULTS.md)
        ax.scatter(r.p50_ms, r.metric, color=colors.get(r.tool, "tab:orange"), zorder=3)
        if r in front or r.tool == "-":
            ax.annotate(
                f"{r.tool if r.tool != '-' else ''} {r.variant}".strip()[:32],
                (r.p50_ms, r.metric),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.plot(
        [r.p50_ms for r in front],
        [r.metric for r in front],
        "--",
        color="gray",
        zorder=2,
        label="Pareto frontier",
    )
    ax.set_xlabel("median latency, batch 1, 1 thread (ms)")
    ax.set_ylabel(METRIC_NAME[zoo.spec(name).kind])
    ax.set_title(
        f"{name}: latency vs {METRIC_NAME[zoo.spec(name).kind]} (blue: onnxopt, orange: peers)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(
    all_rows: dict[str, list[Row]],
    plots: dict[str, Path | None],
    out: Path,
    args: argparse.Namespace,
    seconds: float,
) -> str:
    import onnxruntime as ort

    lines = [
        "# Benchmark results",
        "",
        f"Produced by `python -m benchmarks.run_all{' --quick' if args.quick else ''}` in "
        f"{seconds / 60:.1f} min on {platform.machine()} ({_cpu()}), onnxruntime "
        f"{ort.__version__}, Python {platform.python_version()}. Latency: onnxruntime CPU, "
        f"all graph optimizations, batch 1, 1 intra-op thread, {args.runs} timed runs, "
        "median (p50) and p90 in ms; speedup against the original. Optimizer time and peak "
        "RSS: the tool's own subprocess (imports included). onnxopt pipelines include "
        "their onnxruntime verification; a lossy pass that breaks the budget is rolled back "
        "(see notes). MACs are counted by `onnxopt inspect` (QDQ models count their "
        "float-equivalent MACs).",
        "",
        "Peers: onnxsim, onnxslim, onnxoptimizer, onnxruntime `quantize_static` (QDQ, "
        "per-channel; best of its calibrators), onnxruntime's transformers optimizer (BERT; "
        "contrib ops), torch-pruning (L1, 50 %, on the torch model; digits fine-tuned 5 "
        "epochs). onnxsim has no pruning or quantizer, so those two stand in.",
        "",
    ]
    for name, rows in all_rows.items():
        kind = zoo.spec(name).kind
        lines += [
            f"## {name}",
            "",
            f"Metric: {METRIC_NAME[kind]}. Budget for onnxopt's lossy passes: {BUDGETS[kind]}.",
            "",
        ]
        lines += [
            "| tool | variant | status | p50 ms | p90 ms | speedup | size MB | MMACs | "
            f"{METRIC_NAME[kind]} | optimizer s | optimizer peak MB | notes |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        front = {id(r) for r in pareto(rows)}
        for r in rows:
            star = " *" if id(r) in front else ""
            lines.append(
                f"| {r.tool} | {r.variant}{star} | {r.status.replace('|', '/')[:90]} | "
                f"{_f(r.p50_ms, '.3f')} | {_f(r.p90_ms, '.3f')} | {_f(r.speedup, '.2f')} | "
                f"{_f(r.size_mb, '.2f')} | {_f(r.macs and r.macs / 1e6, '.1f')} | "
                f"{_f(r.metric, '.2f')} | {_f(r.opt_s, '.1f')} | {_f(r.opt_peak_mb, '.0f')} | "
                f"{'; '.join(r.notes).replace('|', '/')[:160]} |"
            )
        lines.append("")
        lines.append("`*` on the Pareto frontier (no other row is both faster and better).")
        if plots.get(name):
            rel = (
                Path(plots[name]).relative_to(out.parent)
                if out.parent in Path(plots[name]).parents
                else plots[name]
            )
            lines += ["", f"![{name} Pareto plot]({rel})", ""]
    cost = ROOT / "benchmarks" / "optimizer_cost.md"
    if cost.exists():
        lines += ["## Optimizer cost on bert_base", "", cost.read_text().split("\n", 2)[-1]]
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                import os

                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits_resnet + bert_small, ~3 min")
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(FULL)}")
    ap.add_argument(
        "--out",
        type=Path,
        help="folder for RESULTS.md, results.json, plots/ "
        "(default: benchmarks/, or build/quick/ with --quick)",
    )
    ap.add_argument("--runs", type=int, help="timed runs per latency (default 200, quick 30)")
    ap.add_argument("--timeout", type=float, help="seconds per optimizer job (600, quick 120)")
    args = ap.parse_args(argv)
    args.runs = args.runs or (30 if args.quick else 200)
    timeout = args.timeout or (120.0 if args.quick else 600.0)
    models = tuple(args.models.split(",")) if args.models else (QUICK if args.quick else FULL)
    out = args.out or (ROOT / "build" / "quick" if args.quick else ROOT / "benchmarks")
    work = ROOT / "build" / ("run_all_quick" if args.quick else "run_all")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    all_rows: dict[str, list[Row]] = {}
    plots: dict[str, Path | None] = {}
    for name in models:
        try:
            all_rows[name] = run_model(
                name, work / name, quick=args.quick, runs=args.runs, timeout=timeout
            )
        except zoo.ZooError as e:
            all_rows[name] = [Row(name, "original", "-", status=f"zoo build failed: {e}")]
        plots[name] = plot(name, all_rows[name], out / "plots" / f"{name}.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({k: [asdict(r) for r in v] for k, v in all_rows.items()}, indent=1, default=str)
    )
    (out / "RESULTS.md").write_text(
        markdown(all_rows, plots, out / "RESULTS.md", args, time.perf_counter() - t0)
    )
    logger.info("wrote %s in %.1f min", out / "RESULTS.md", (time.perf_counter() - t0) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
