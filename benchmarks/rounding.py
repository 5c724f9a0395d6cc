"""Weight rounding on real models: rounding to nearest, AdaRound and error feedback (GPTQ).

    python benchmarks/rounding.py [--models digits_mobilenetv2 minilm ocr_rec]
                                  [--methods nearest gptq adaround]

Each model is quantized whole (every eligible layer int8: no mixed-precision search, no latency
placement, so that only the rounding differs) by onnxopt's quantize-int8 with each rounding,
calibrated on one half of the benchmark's calibration data and scored on the other half:
digits accuracy (%) for the digits CNNs, cosine against fp32 for all-MiniLM-L6-v2, and for the
PP-OCRv5 recognizer the share of text crops read as fp32 reads them (%) (its calibration data
is its recorded crops, in batches; every other batch is held out). It prints the metric and
the seconds the pass took. The cases come from
``benchmarks/quant_cases.py`` (built under build/quant_bench/ by ``benchmarks/quantization.py``,
or here when missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import quant_cases as qc  # noqa: E402

WORK = ROOT / "build" / "quant_bench"


def _halves(c: qc.Case) -> tuple[list[dict], list[dict], list | None, list | None]:
    """(calibration runs, held-out runs, their labels) of a case."""
    if c.ocr:
        labels = c.calib_labels or c.labels
        return c.calib[0::2], c.calib[1::2], labels[0::2], labels[1::2]
    if c.kind == "digits":
        return c.calib, c.evals, None, c.labels
    return c.calib, c.evals, None, None


def _score(c: qc.Case, model_path: str, held: list[dict], labels: list | None) -> float:
    from benchmarks import quant_ocr
    from benchmarks.quantization import outputs

    if c.ocr:
        runs = [{"y": o[0]} for o in outputs(model_path, held)]
        return quant_ocr.rec_text_agreement(runs, labels)
    ref = outputs(str(c.source), held)
    m = qc.metric(c, ref, outputs(model_path, held))
    return m.get("accuracy", m["cosine"])


def run(models: list[str], methods: list[str]) -> list[dict]:
    from onnxopt.contract import PassContext
    from onnxopt.data import Feeds
    from onnxopt.model import load_model, save_model
    from onnxopt.passes.quantize import QuantizeInt8
    from onnxopt.passes.quantize.config import QuantizeConfig

    rows = []
    for name in models:
        c = qc.case(name, WORK, False)
        cal, held, cal_labels, held_labels = _halves(c)
        model = load_model(str(c.source))
        for method in methods:
            config = QuantizeConfig(rounding=method, fallback=False, latency_aware=False)
            t = time.perf_counter()
            res = QuantizeInt8(config).run_model(
                model, PassContext(feeds=Feeds(cal, labels=cal_labels), allow_slower=True)
            )
            seconds = time.perf_counter() - t
            out = WORK / name / f"rounding_{method}.onnx"
            save_model(res.model, out)
            row = {
                "model": name,
                "rounding": method,
                "metric": _score(c, str(out), held, held_labels),
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{name:20s} {method:9s} metric {row['metric']:.4f}  {seconds:.1f} s",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits_mobilenetv2", "minilm", "ocr_rec"])
    ap.add_argument("--methods", nargs="+", default=["nearest", "gptq", "adaround"])
    a = ap.parse_args()
    run(a.models, a.methods)


if __name__ == "__main__":
    main()
