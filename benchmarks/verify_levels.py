"""What onnxruntime's graph optimizations would save onnxopt's verification runs.

    python benchmarks/verify_levels.py [--model M] [--calib C] [--runs 8] [--rounds 3]

onnxopt verifies every stage on sessions with graph optimizations off (the graph as written is
what is checked). This times the same runs, two threads, under each optimization level, the
session's build and its runs apart, in rounds (the levels in turn), and prints the largest
difference of the first output from the unoptimized session's. By default it reads the
PP-OCRv5 recognizer and the calibration runs the int8 benchmark wrote
(``python benchmarks/quantization.py --models ocr_rec`` first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parents[1] / "build" / "quant_bench" / "ocr_rec"


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WORK / "fp32.onnx")
    ap.add_argument("--calib", type=Path, default=WORK / "calib.npz")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for path in (args.model, args.calib):
        if not path.is_file():
            print(f"error: {path} is missing (run the int8 benchmark first)", file=sys.stderr)
            raise SystemExit(2)
    from onnxopt.data import load_feeds
    from onnxopt.model import load_model

    # onnxopt's own reader: the benchmark's per-run keys, the labels left out
    runs = load_feeds(str(args.calib), load_model(str(args.model)), limit=args.runs).runs
    levels = {
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in levels}
    diff: dict[str, float] = {}
    for _ in range(args.rounds):
        reference = None
        for name, level in levels.items():
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.intra_op_num_threads = 2
            so.add_session_config_entry("session.disable_prepacking", "1")
            t0 = time.perf_counter()
            sess = ort.InferenceSession(str(args.model), so, providers=["CPUExecutionProvider"])
            t1 = time.perf_counter()
            outs = [sess.run(None, run)[0] for run in runs]
            times[name].append((t1 - t0, time.perf_counter() - t1))
            if reference is None:
                reference = outs
            else:
                d = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, outs, strict=True))
                diff[name] = max(diff.get(name, 0.0), d)
    print(f"{args.model.name}: {len(runs)} runs, {args.rounds} rounds (build s + runs s)")
    for name, t in times.items():
        cells = ", ".join(f"{b:.3f} + {r:.3f}" for b, r in t)
        print(f"  {name:9s} {cells}   max |diff| vs off: {diff.get(name, 0.0):.2g}")


if __name__ == "__main__":
    main()
