"""Peak memory of a layer-by-layer comparison: ``onnxopt debug`` against Polygraphy's
``polygraphy run --onnxrt --onnx-outputs mark all`` on the BERT-base-style encoder.

    python benchmarks/debug_memory.py [--model bert_base] [--runs 1]

Each tool runs in its own process under ``/usr/bin/time -v`` (peak RSS = "Maximum resident set
size"). onnxopt compares the original with its optimized model (``onnxopt optimize``, made once
and cached in build/bench/) tensor by tensor; Polygraphy marks every tensor of the original as
an output and runs it once (one model; comparing two takes two such runs). Both use one run of
the same inputs (``--runs 4``: onnxopt compares on four; its peak does not grow with them).
Polygraphy is a peer (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxopt import zoo

CACHE = ROOT / "build" / "bench" / "debug_memory"
#: runs in the inputs file (onnxopt debug --runs picks how many it compares on)
RUNS = 4
TIME = "/usr/bin/time"


def measure(cmd: list[str]) -> dict[str, float | int | str]:
    """Run ``cmd`` under /usr/bin/time -v: exit code, peak RSS (MB), wall seconds."""
    r = subprocess.run([TIME, "-v", *cmd], capture_output=True, text=True)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", r.stderr)
    secs = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    return {
        "rc": r.returncode,
        "peak_mb": int(rss.group(1)) / 1024 if rss else float("nan"),
        "seconds": secs,
        "tail": (r.stdout + r.stderr)[-600:],
    }


def prepare(name: str) -> tuple[Path, Path, Path]:
    """The original, its optimized model and one run of inputs (made once)."""
    import numpy as np
    import onnx

    original = zoo.build(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    optimized = CACHE / f"{name}.opt.onnx"
    if not optimized.exists():
        cmd = [sys.executable, "-m", "onnxopt", "optimize", str(original), "-o", str(optimized)]
        subprocess.run(cmd, check=True, capture_output=True)
    data = CACHE / f"{name}.inputs{RUNS}.npz"
    if not data.exists():
        m = onnx.load(original, load_external_data=False)
        rng = np.random.default_rng(0)
        arrays = {}
        for v in m.graph.input:
            shape = [RUNS] + [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]  # a stack
            if v.type.tensor_type.elem_type == onnx.TensorProto.INT64:
                high = 2 if "mask" in v.name else 30522
                arrays[v.name] = rng.integers(0, high, shape).astype(np.int64)
            else:
                arrays[v.name] = rng.standard_normal(shape).astype(np.float32)
        np.savez(data, **arrays)
    return original, optimized, data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bert_base")
    ap.add_argument("--runs", type=int, default=1, help="runs onnxopt debug compares on")
    args = ap.parse_args()
    if not Path(TIME).exists():
        print(f"{TIME} not found (apt-get install time)", file=sys.stderr)
        return 2
    a, b, data = prepare(args.model)
    size_mb = max(a.stat().st_size, b.stat().st_size) / 2**20
    rows = []
    ours = [sys.executable, "-m", "onnxopt", "debug", str(a), str(b), "--data", str(data)]
    rows.append(("onnxopt debug A B (both models)", measure([*ours, "--runs", str(args.runs)])))
    poly = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    if Path(poly).exists():
        cmd = [poly, "run", str(a), "--onnxrt", "--onnx-outputs", "mark", "all"]
        rows.append(("polygraphy run A --onnxrt --onnx-outputs mark all (one model)", measure(cmd)))
    else:
        print("polygraphy not installed: pip install polygraphy (the bench extra)")
    print(f"\n{args.model}: larger model {size_mb:.0f} MB; 2x = {2 * size_mb:.0f} MB\n")
    print("| tool | peak RSS | vs model size | wall time | exit |")
    print("|---|---:|---:|---:|---:|")
    for label, m in rows:
        print(
            f"| {label} | {m['peak_mb']:,.0f} MB | {m['peak_mb'] / size_mb:.2f}x | "
            f"{m['seconds']:.1f} s | {m['rc']} |"
        )
    for label, m in rows:
        if m["rc"] not in (0, 1):
            print(f"\n{label} failed:\n{m['tail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
