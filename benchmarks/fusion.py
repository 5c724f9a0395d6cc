"""Fusion side by side: onnxopt vs onnxsim, onnxslim, onnxoptimizer (and onnxruntime's
transformers optimizer for BERT) on the zoo's models, both torch exporters.

For every (model, exporter, tool) it reports the node count, the onnxruntime latency with graph
optimizations off (``ORT_DISABLE_ALL``: what a runtime that does not fuse sees) and with
``ORT_ENABLE_ALL``, 2 intra-op threads, batch 1 (best of ``--repeat`` runs after 3 warm-ups), and the max abs error against the original
model (both run with optimizations off).

Usage::

    python benchmarks/fusion.py            # resnet18, mobilenetv2, bert_base (slow: ~440 MB BERT)
    python benchmarks/fusion.py --quick    # bert_small only
    python benchmarks/fusion.py --models resnet18 --exporters dynamo

Prints a markdown table and writes it to ``benchmarks/FUSION.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import first_line

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.fusion")

THREADS = 2
FULL = ("resnet18", "mobilenetv2", "bert_base")
QUICK = ("bert_small",)


def _is_bert(name: str) -> bool:
    return name.startswith("bert")


# ---- tools -------------------------------------------------------------------------------------


def _onnxopt(target: str) -> Callable[[onnx.ModelProto, dict], onnx.ModelProto]:
    def run(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
        from onnxopt.passes.registry import manager
        from onnxopt.synth import get_feeds

        feeds = get_feeds(model, data=inputs)
        out, report = manager(["cleanup", "fusion"], target=target).run(model, feeds)
        dropped = [p.name for p in report.passes if p.status in ("rolled back", "error")]
        if dropped:
            logger.warning("onnxopt rolled back: %s", ", ".join(dropped))
        return out

    return run


def _onnxsim(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    from onnxsim import simplify

    out, ok = simplify(model)
    if not ok:
        raise RuntimeError("onnxsim check failed")
    return out


def _onnxslim(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _onnxoptimizer(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(model, onnxoptimizer.get_fuse_and_elimination_passes())


def _ort_transformers(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(
        model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False
    )
    return opt.model


def tools_for(name: str) -> dict[str, Callable]:
    tools: dict[str, Callable] = {"original": lambda m, i: m, "onnxopt": _onnxopt("onnx")}
    if _is_bert(name):
        tools["onnxopt --target onnxruntime"] = _onnxopt("onnxruntime")
    tools.update({"onnxsim": _onnxsim, "onnxslim": _onnxslim, "onnxoptimizer": _onnxoptimizer})
    if _is_bert(name):
        tools["ort transformers optimizer"] = _ort_transformers
    return tools


# ---- measuring -----------------------------------------------------------------------------------


def _session(model_path: str, optimized: bool):
    from onnxopt.timing import session

    return session(model_path, threads=THREADS, optimization="all" if optimized else "disable")


def latency_ms(sess, inputs: dict, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        sess.run(None, inputs)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t)
    # the machine is shared: the minimum is the least disturbed estimate of the kernel time
    return 1000 * min(times)


def _save(model: onnx.ModelProto, path: Path) -> str:
    big = model.ByteSize() > 1_800_000_000 if hasattr(model, "ByteSize") else False
    onnx.save(model, str(path), save_as_external_data=big)
    return str(path)


def measure(name: str, exporter: str, repeat: int, only: list[str] | None = None) -> list[dict]:
    from onnxopt import zoo

    src = zoo.build(name, exporter)
    inputs = zoo.example_inputs(name)
    original = onnx.load(str(src))
    rows = []
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for tool, fn in tools_for(name).items():
            if only and tool not in only and tool != "original":
                continue
            row: dict = {"model": name, "exporter": exporter, "tool": tool}
            try:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = fn(_copy(original), inputs)
                row["seconds"] = time.perf_counter() - t0
                path = _save(m, Path(tmp) / f"{tool.replace(' ', '_')}.onnx")
                row["nodes"] = len(m.graph.node)
                del m
                plain = _session(path, optimized=False)
                outs = plain.run(None, inputs)
                if ref is None:
                    ref = outs
                row["max_err"] = max(
                    float(np.max(np.abs(np.asarray(a, np.float64) - b)))
                    for a, b in zip(outs, ref, strict=True)
                )
                row["ms_off"] = latency_ms(plain, inputs, repeat)
                del plain
                row["ms_all"] = latency_ms(_session(path, optimized=True), inputs, repeat)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {first_line(e, 80)}"
            logger.info("%s", row)
            print(_fmt_row(row), flush=True)
            rows.append(row)
    return rows


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


# ---- output --------------------------------------------------------------------------------------

HEADER = (
    "| model | exporter | tool | nodes | ms (ORT off) | ms (ORT all) | max abs err |\n"
    "|---|---|---|---:|---:|---:|---:|"
)


def _fmt_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['exporter']} | {r['tool']} | failed: {r['error']} | | | |"
    return (
        f"| {r['model']} | {r['exporter']} | {r['tool']} | {r['nodes']} | "
        f"{r['ms_off']:.2f} | {r['ms_all']:.2f} | {r['max_err']:.2e} |"
    )


def table(rows: list[dict]) -> str:
    return "\n".join([HEADER, *(_fmt_row(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bert_small only")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--exporters", nargs="*", default=["torchscript", "dynamo"])
    ap.add_argument("--tools", nargs="*", default=None, help="subset of tools (plus original)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "FUSION.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    models = args.models or (QUICK if args.quick else FULL)
    rows: list[dict] = []
    print(HEADER, flush=True)
    for name in models:
        for exporter in args.exporters:
            rows += measure(name, exporter, args.repeat, args.tools)
    text = table(rows)
    Path(args.out).write_text(
        "# Fusion benchmark\n\nGenerated by `python benchmarks/fusion.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + f"`; onnxruntime CPU, {THREADS} intra-op threads, batch 1, best of "
        f"{args.repeat} runs. Max abs error is against the original model (optimizations off).\n\n"
        + text
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
