"""Pieces of ``big_models.py``: output comparison of big models one session at a time, the
streaming GRU (``torch.cond``) and Loop-body models, and the markdown report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

_RUN = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(0, 1000, (1, 8)).astype(np.int64)
np.save(sys.argv[2], s.run(None, {"input_ids": ids})[0])
"""


def compare_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Max abs difference and cosine of two decoders' logits, each run alone in a fresh
    process (two sessions of a model of many GB are not held at once)."""
    if not b.exists():
        return {"status": "missing"}
    outs = []
    for i, m in enumerate((a, b)):
        npy = b.parent / f"logits{i}.npy"
        r = subprocess.run([PY, "-c", _RUN, str(m), str(npy)], capture_output=True, text=True)
        if r.returncode:
            return {"status": "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:160]}
        outs.append(np.load(npy).astype(np.float64).ravel())
        npy.unlink()
    x, y = outs
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    return {"status": "ok", "max_abs": float(np.abs(x - y).max()), "cosine": round(cos, 6)}


def report_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    return {
        "nodes": [r["original"].get("nodes"), r["final"].get("nodes")],
        "bytes": [r["original"].get("bytes"), r["final"].get("bytes")],
        "peak_rss_mb": r.get("peak_rss_mb"),
        "passes": {
            p["name"]: [p["status"], p.get("peak_rss_mb")]
            for p in r["passes"]
            if p["status"] != "unchanged"
        },
        "notes": r.get("notes", []),
    }


# ----------------------------------------------------------------------------- stream


def body_nodes(model) -> dict[str, int]:
    import onnx

    out = {}
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out[f"{n.op_type}.{a.name}"] = len(a.g.node)
    return out


def build_stream(path: Path) -> Path:
    """A streaming GRU: its state either carries on or restarts, chosen by ``torch.cond``."""
    import torch

    class Streaming(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(40)
            self.gru = torch.nn.GRU(40, 64, batch_first=True)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 2)
            )

        def forward(self, x, h, reset):
            def fresh(x, h):
                y, h2 = self.gru(self.norm(x), torch.zeros_like(h))
                return self.head(y), h2

            def carry(x, h):
                y, h2 = self.gru(self.norm(x), h)
                return self.head(y), h2

            return torch.cond(reset, fresh, carry, (x, h))

    torch.manual_seed(0)
    args = (torch.randn(1, 16, 40), torch.randn(1, 1, 64), torch.tensor(False))
    prog = torch.onnx.export(Streaming().eval(), args, dynamo=True, input_names=["x", "h", "reset"])
    prog.save(str(path))
    return path


def stream(args: Any, work: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import onnxsim
    import onnxslim

    from onnxopt.passes.registry import manager

    src = work / "stream_gru_cond.onnx"
    if not src.exists():
        build_stream(src)
    m = onnx.load(str(src))
    models = {"original": m, "onnxopt": manager(["cleanup", "fusion"]).run(m)[0]}
    models["onnxsim"] = onnxsim.simplify(m, include_subgraph=True)[0]
    models["onnxslim"] = onnxslim.slim(m)
    rng = np.random.default_rng(0)
    rows = {}
    for name, model in models.items():
        diffs = []
        for reset in (False, True):
            feed = {
                "x": rng.standard_normal((1, 16, 40)).astype(np.float32),
                "h": rng.standard_normal((1, 1, 64)).astype(np.float32),
                "reset": np.array(reset),
            }
            ref = ort.InferenceSession(m.SerializeToString()).run(None, feed)
            got = ort.InferenceSession(model.SerializeToString()).run(None, feed)
            diffs.append(max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
        rows[name] = {
            "main": len(model.graph.node),
            "bodies": body_nodes(model),
            "max_abs": max(diffs),
        }
    return {"model": str(src), "rows": rows}


# ------------------------------------------------------------------------------- body


def build_loop_cell(path: Path, hidden: int = 64, steps: int = 8) -> Path:
    """A recurrent cell in a Loop body: h' = Relu(x_t Wx + h Wh + b), y_t = h' Wo."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    f = T.FLOAT
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["xs", "i"], ["x_t"], axis=0, name="gather"),
            helper.make_node("MatMul", ["x_t", "Wx"], ["a"], name="in_proj"),
            helper.make_node("MatMul", ["h_in", "Wh"], ["r"], name="state_proj"),
            helper.make_node("Add", ["a", "r"], ["s"], name="sum"),
            helper.make_node("Add", ["s", "bias"], ["s2"], name="bias_add"),
            helper.make_node("Relu", ["s2"], ["h_out"], name="relu"),
            helper.make_node("MatMul", ["h_out", "Wo"], ["y_t"], name="out_proj"),
            helper.make_node("Identity", ["c_in"], ["c_out"], name="cond"),
        ],
        "cell",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("c_in", T.BOOL, []),
            helper.make_tensor_value_info("h_in", f, [1, hidden]),
        ],
        [
            helper.make_tensor_value_info("c_out", T.BOOL, []),
            helper.make_tensor_value_info("h_out", f, [1, hidden]),
            helper.make_tensor_value_info("y_t", f, [1, hidden]),
        ],
    )
    inits = [
        numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.2).astype(np.float32), n)
        for n in ("Wx", "Wh", "Wo")
    ]
    inits += [
        numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(steps, np.int64), "steps"),
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.zeros((1, hidden), np.float32), "h0"),
    ]
    g = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "h0"], ["h", "ys"], body=body, name="loop")],
        "stream",
        [helper.make_tensor_value_info("xs", f, [steps, 1, hidden])],
        [
            helper.make_tensor_value_info("h", f, [1, hidden]),
            helper.make_tensor_value_info("ys", f, [steps, 1, hidden]),
        ],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def body(args: Any, work: Path) -> dict[str, Any]:
    """Static int8 and int4 on the Loop cell: how many of its MatMuls each rewrites."""
    import onnx

    from onnxopt.data import Feeds
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    src = build_loop_cell(work / "loop_cell.onnx")
    m = onnx.load(str(src))
    rng = np.random.default_rng(1)
    feeds = Feeds([{"xs": rng.standard_normal((8, 1, 64)).astype(np.float32)} for _ in range(64)])
    rows = {}
    for name, kw in (
        ("quantize-int8", {"allow_slower": True}),
        ("quantize-int4", {"target": "onnxruntime"}),
    ):
        out, rep = manager([name], budget=Budget(min_cosine=0.99), **kw).run(m, feeds)
        cell = out.graph.node[0].attribute[0].g
        ops = [n.op_type for n in cell.node]
        p = rep.passes[-1]
        rows[name] = {
            "status": p.status,
            "reason": p.reason,
            "sites": p.rewrites,
            "dropped": list(p.dropped_sites),
            "body_ops": {k: ops.count(k) for k in sorted(set(ops))},
            "cosine": rep.final_vs_original.cosine,
        }
    return {"model": str(src), "rows": rows}


# --------------------------------------------------------------------------- markdown


def _rows(rows: list[dict], key: str, size_gb: float) -> list[str]:
    out = [
        f"| {key} | status | seconds | peak RSS | peak / model size |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak_gb']:.2f} GB" if r.get("peak_gb") else "-"
        out.append(
            f"| {r.get('tool') or r.get('step')} | {r['status'][:90]} | {r.get('seconds', '-')} "
            f"| {peak} | {r.get('ratio') or '-'}x |"
        )
    return out


def markdown(results: dict[str, Any], cap_gb: float) -> str:
    lines = ["# Big models and control flow (`python benchmarks/big_models.py`)", ""]
    lines.append(
        f"Each tool in a fresh process under `/usr/bin/time -v`; peers capped at {cap_gb:.0f} GB "
        "of address space. Machine: 2 shared cores, 24 GB RAM; times are noisy."
    )
    for name in ("decoder", "bert", "roundtrip"):
        r = results.get(name)
        if not r:
            continue
        lines += ["", f"## {name}: {r['model'].split(os.sep)[-1]} ({r['size_gb']} GB)", ""]
        lines += _rows(r["rows"], "tool" if name != "roundtrip" else "step", r["size_gb"])
        for k in ("optimized_vs_original", "int8_vs_original"):
            if k in r:
                lines.append(f"\n{k}: {r[k]}")
    if results.get("stream"):
        lines += ["", "## stream: GRU state update in a torch.cond (dynamo), nodes", ""]
        lines += ["| tool | main graph | bodies | max abs diff |", "|---|---:|---|---:|"]
        for tool, row in results["stream"]["rows"].items():
            lines.append(f"| {tool} | {row['main']} | {row['bodies']} | {row['max_abs']:.2g} |")
    if results.get("body"):
        lines += ["", "## body: int8 and int4 inside a Loop body (64 calibration runs)", ""]
        lines += [
            "| pass | status | sites kept | dropped by bisection | body ops after | cosine |",
            "|---|---|---:|---|---|---:|",
        ]
        for name, b in results["body"]["rows"].items():
            ops = ", ".join(f"{k} {v}" for k, v in b["body_ops"].items())
            status = b["status"] + (f" ({b['reason']})" if b["reason"] else "")
            dropped = ", ".join(b.get("dropped", [])) or "none"
            lines.append(
                f"| {name} | {status} | {b['sites']} | {dropped} | {ops} | {b['cosine']:.5f} |"
            )
    return "\n".join(lines) + "\n"
