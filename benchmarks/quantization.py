"""int8 quantization, side by side: onnxopt quantize-int8 vs onnxruntime and onnxsim quantizers.

For each model: fp32 and int8 latency (onnxruntime CPU, ORT_ENABLE_ALL, 2 threads, batch 1),
size, and the metric (digits: test accuracy; others: cosine and top-1 agreement vs fp32).
Peers: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax / Entropy /
Percentile, after ``quant_pre_process``) and ``onnxsim.quantize_static`` (0.8.1). Also prints the
calibration peak memory (max RSS of a child process) for bert_base with 256 samples.

    python benchmarks/quantization.py [--quick] [--models a,b] [--out benchmarks/QUANTIZATION.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import first_line

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("digits_resnet", "resnet18", "mobilenetv2", "bert_base")
QUICK = ("digits_resnet", "resnet18")
#: latency measurements per model (median): the machine is shared, single runs are noisy
REPEATS = 3


def _session(path: str, threads: int = 2, optimized: bool = True):
    from onnxopt.timing import session

    return session(path, threads=threads, optimization="all" if optimized else "disable")


def _latency_once(path: str, feed: dict, seconds: float, warmup: int) -> float:
    s = _session(path)
    for _ in range(warmup):
        s.run(None, feed)
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 10:
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def latency_ms(
    path: str, feed: dict, seconds: float = 2.0, warmup: int = 5, repeats: int = REPEATS
) -> float:
    """Median over ``repeats`` measurements (fresh session each) of the median run time."""
    return float(np.median([_latency_once(path, feed, seconds, warmup) for _ in range(repeats)]))


def outputs(path: str, feeds: list[dict]) -> list[list[np.ndarray]]:
    s = _session(path)
    return [s.run(None, f) for f in feeds]


def metric(kind: str, ref: list, out: list, labels: np.ndarray | None) -> dict:
    a = np.concatenate([r[0].ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([o[0].ravel() for o in out]).astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    res = {"cosine": cos}
    if kind in ("digits", "image"):
        ra = np.concatenate([r[0].argmax(-1) for r in ref])
        oa = np.concatenate([o[0].argmax(-1) for o in out])
        res["top1"] = float((ra == oa).mean())
        if labels is not None:
            res["accuracy"] = float((oa == labels).mean() * 100)
    return res


def data_for(name: str, kind: str, quick: bool) -> tuple[list[dict], list[dict], np.ndarray | None]:
    """(calibration feeds, evaluation feeds, labels)."""
    from onnxopt import zoo

    if kind == "digits":
        d = zoo.digits_data()
        calib = [{zoo.INPUT: d["X_train"][i : i + 1]} for i in range(256)]
        evals = [{zoo.INPUT: d["X_test"][i : i + 1]} for i in range(len(d["X_test"]))]
        return calib, evals, d["y_test"]
    n_cal, n_eval = (16, 16) if quick else (32, 32)
    if kind == "bert":
        n_cal, n_eval = (8, 8) if quick else (32, 16)
    calib = [zoo.example_inputs(name, 1, seed=100 + i) for i in range(n_cal)]
    evals = [zoo.example_inputs(name, 1, seed=1000 + i) for i in range(n_eval)]
    return calib, evals, None


def ours(src: str, dst: str, calib: list[dict], **opts) -> tuple[str, str]:
    from onnxopt.data import Feeds
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    feeds = Feeds(calib, source="calibration")
    pm = manager(
        ["quantize-int8"],
        budget=Budget(min_cosine=0.99),
        options={"quantize-int8": opts},
        verify_runs=16,
    )
    out, report = pm.run(src, feeds)
    onnx.save(out, dst)
    p = report.passes[-1]
    return p.status, "; ".join(p.notes[:3])


class _Reader:
    def __init__(self, feeds: list[dict]) -> None:
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def ort_peer(src: str, dst: str, calib: list[dict], method: str, tmp: str) -> str:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.path.join(tmp, "pre.onnx")
    if not os.path.exists(pre):
        quant_pre_process(src, pre, skip_symbolic_shape=False)
    m = {
        "MinMax": CalibrationMethod.MinMax,
        "Entropy": CalibrationMethod.Entropy,
        "Percentile": CalibrationMethod.Percentile,
    }[method]
    quantize_static(
        pre,
        dst,
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=m,
    )
    return "ok"


def onnxsim_peer(src: str, dst: str, calib: list[dict]) -> str:
    import onnxsim

    q = onnxsim.quantize_static(
        src, calibration_data=calib, per_channel=True, activation_type="uint8"
    )
    onnx.save(q, dst)
    return "ok"


def bench_model(name: str, quick: bool) -> list[dict]:
    from onnxopt import zoo

    s = zoo.spec(name)
    src = str(zoo.build(name))
    calib, evals, labels = data_for(name, s.kind, quick)
    lat_feed = evals[0]
    ref = outputs(src, evals)
    rows = []
    fp32 = {
        "model": name,
        "method": "fp32",
        "status": "-",
        "size_mb": os.path.getsize(src) / 1e6,
        "path": src,
        **metric(s.kind, ref, ref, labels),
    }
    rows.append(fp32)
    tmp = tempfile.mkdtemp(prefix=f"qbench_{name}_")
    methods = [("onnxopt", lambda d: ours(src, d, calib))]
    if s.kind == "bert":
        methods.append(("onnxopt smooth=0.5", lambda d: ours(src, d, calib, smooth=0.5)))
    elif not quick:
        methods.append(("onnxopt entropy", lambda d: ours(src, d, calib, calibrator="entropy")))
    peer_methods = ("MinMax", "Entropy", "Percentile") if not quick else ("MinMax", "Percentile")
    for m in peer_methods:
        methods.append((f"ort {m}", lambda d, m=m: (ort_peer(src, d, calib, m, tmp), "")))
    methods.append(("onnxsim", lambda d: (onnxsim_peer(src, d, calib), "")))
    for label, fn in methods:
        dst = os.path.join(tmp, label.replace(" ", "_") + ".onnx")
        row = {"model": name, "method": label}
        t0 = time.perf_counter()
        try:
            status, notes = fn(dst)
            row["status"], row["notes"] = status, notes
            row["quantize_s"] = time.perf_counter() - t0
            row["size_mb"] = os.path.getsize(dst) / 1e6
            row.update(metric(s.kind, ref, outputs(dst, evals), labels))
            row["path"] = dst
        except Exception as e:
            row["status"] = "failed"
            row["notes"] = f"{type(e).__name__}: {first_line(e, 120)}"
        rows.append(row)
    # latency: every variant measured once per round, REPEATS rounds (interleaved, so a burst
    # of load on the shared machine hits all variants alike), median per variant
    timed = [r for r in rows if "path" in r]
    samples: dict[int, list[float]] = {id(r): [] for r in timed}
    for _ in range(REPEATS):
        for r in timed:
            samples[id(r)].append(_latency_once(r["path"], lat_feed, 2.0, 5))
    for r in timed:
        r["latency_ms"] = float(np.median(samples[id(r)]))
        r["speedup"] = fp32["latency_ms"] / r["latency_ms"]
        r.pop("path")
    shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


CALIB_CHILD = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from onnxopt import zoo
from onnxopt.data import Feeds
from onnxopt.model import load_model
from onnxopt.contract import PassContext
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
m = load_model(str(zoo.build("bert_base")))
feeds = Feeds([zoo.example_inputs("bert_base", 1, seed=i) for i in range({n})])
r = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
print("changed", r.changed, r.rewrites)
"""


def calibration_memory(n: int = 256) -> dict:
    """Peak RSS (MB) of a child process quantizing bert_base with ``n`` calibration samples.

    Measured by ``/usr/bin/time -v`` ("Maximum resident set size") when it exists, else by the
    children's ``ru_maxrss``; the child loads the model, calibrates and inserts Q/DQ.
    """
    code = CALIB_CHILD.format(root=str(ROOT), n=n)
    cmd = [sys.executable, "-c", code]
    timer = os.path.exists("/usr/bin/time")
    if timer:
        cmd = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if timer:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        peak_kb = int(m.group(1)) if m else peak_kb
    return {
        "samples": n,
        "peak_rss_mb": peak_kb / 1024,
        "seconds": time.perf_counter() - t0,
        "ok": r.returncode == 0,
        "how": "/usr/bin/time -v" if timer else "ru_maxrss",
        "stdout": r.stdout.strip()[-200:],
        "stderr": "" if r.returncode == 0 else r.stderr.strip()[-300:],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | method | status | size MB | latency ms | speed-up | accuracy % | cosine "
        "| top-1 agr. | calib. peak MB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:

        def f(k: str, fmt: str, r: dict = r) -> str:
            return format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"

        status = r.get("status", "")
        if status == "failed":
            status = "failed: " + r.get("notes", "")[:60]
        lines.append(
            f"| {r['model']} | {r['method']} | {status} | {f('size_mb', '.2f')} | "
            f"{f('latency_ms', '.3f')} | {f('speedup', '.2f')} | "
            f"{f('accuracy', '.2f')} | {f('cosine', '.4f')} | {f('top1', '.3f')} | "
            f"{f('calib_peak_mb', '.0f')} |"
        )
    return "\n".join(lines)


#: speed-up goals of issue 5 (at cosine >= 0.99); digits: accuracy within 0.5 points of fp32
SPEEDUP_GOALS = {"resnet18": 2.5, "bert_base": 1.8, "mobilenetv2": 1.5}


def goals(rows: list[dict]) -> str:
    """One line per model: onnxopt's default configuration against fp32 and the best peer."""
    lines = [
        "| model | onnxopt speed-up (goal) | onnxopt metric | best peer metric | "
        "onnxopt ms | fastest peer ms | verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = next((r for r in rows if r["model"] == model and r["method"] == "onnxopt"), None)
        fp32 = next((r for r in rows if r["model"] == model and r["method"] == "fp32"), None)
        peers = [
            r
            for r in rows
            if r["model"] == model and r["method"].startswith("ort") and r.get("status") == "ok"
        ]
        if mine is None or fp32 is None or "cosine" not in mine:
            continue
        key = "accuracy" if "accuracy" in mine else "cosine"
        best = max((p[key] for p in peers), default=float("nan"))
        fastest = min((p["latency_ms"] for p in peers), default=float("nan"))
        goal = SPEEDUP_GOALS.get(model)
        ok_metric = mine[key] >= best - (1e-4 if key == "cosine" else 0.0)
        if key == "accuracy":
            ok_metric = ok_metric and mine[key] >= fp32[key] - 0.5
        ok = ok_metric and mine["cosine"] >= 0.99 and (goal is None or mine["speedup"] >= goal)
        fmt = ".2f" if key == "accuracy" else ".4f"
        lines.append(
            f"| {model} | {mine['speedup']:.2f}x ({f'>= {goal}x' if goal else '-'}) | "
            f"{key} {format(mine[key], fmt)} | {format(best, fmt)} | {mine['latency_ms']:.3f} | "
            f"{fastest:.3f} | {'met' if ok else 'NOT met'} |"
        )
    return "\n".join(lines)


NOTES_MARK = "<!-- hand-written notes below: kept when the file is regenerated -->"


def write_markdown(path: str, cmd: str, rows: list[dict], mem: dict | None) -> None:
    old = Path(path).read_text() if Path(path).exists() else ""
    notes = old[old.index(NOTES_MARK) :] if NOTES_MARK in old else ""
    with open(path, "w") as f:
        f.write("# int8 quantization benchmark\n\n")
        f.write(f"Command: `{cmd}`\n\n")
        f.write(
            "onnxruntime CPU, ORT_ENABLE_ALL, 2 threads, batch 1; latency = median of "
            f"{REPEATS} interleaved measurements (every variant once per round), each the "
            "median run time. Peers: onnxruntime `quantize_static` (QDQ, per-channel, "
            "uint8 activations / int8 weights, after `quant_pre_process`) and "
            "`onnxsim.quantize_static`. Image models and bert_base have random weights "
            "and inputs (cosine / top-1 vs fp32 on held-out inputs); digits is trained "
            "(test accuracy). onnxopt runs `quantize-int8` through the PassManager with "
            "`Budget(min_cosine=0.99)`.\n\n"
        )
        f.write(table(rows) + "\n")
        if mem is not None:
            f.write(
                f"\nCalibration peak memory, bert_base, {mem['samples']} samples: "
                f"{mem['peak_rss_mb']:.0f} MB max RSS via {mem['how']} "
                f"({mem['seconds']:.0f} s, ok={mem['ok']}).\n"
            )
        f.write("\n## Goals (issue 5)\n\n" + goals(rows) + "\n")
        if notes:
            f.write("\n" + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits_resnet and resnet18 only")
    ap.add_argument("--models", default=None)
    ap.add_argument("--memory", action="store_true", help="also measure bert_base calibration RSS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "QUANTIZATION.md"))
    ap.add_argument(
        "--json",
        default=str(ROOT / "build" / "quantization_bench.json"),
        help="also save the rows here (re-render with --render)",
    )
    ap.add_argument("--render", default=None, help="only re-render --out from a saved --json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_markdown(args.out, saved["command"], saved["rows"], saved.get("memory"))
        return
    names = args.models.split(",") if args.models else (QUICK if args.quick else MODELS)
    rows: list[dict] = []
    for n in names:
        rows.extend(bench_model(n, args.quick))
    mem = None
    if args.memory or (not args.quick and "bert_base" in names):
        mem = calibration_memory(256)
        print(json.dumps(mem))
        for r in rows:
            if r["model"] == "bert_base" and r["method"] == "onnxopt":
                r["calib_peak_mb"] = mem["peak_rss_mb"]
    print(table(rows))
    cmd = " ".join(["python benchmarks/quantization.py", *sys.argv[1:]])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows, "memory": mem}))
    if args.out:
        write_markdown(args.out, cmd, rows, mem)


if __name__ == "__main__":
    main()
