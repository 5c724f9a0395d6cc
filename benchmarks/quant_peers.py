"""One quantization job in a fresh process: onnxopt or a peer, timed, its peak memory read.

    python benchmarks/quant_peers.py JOB.json

Every tool runs in its own process (the peers in their own virtual environments, since they
pin packages differently: ``NNCF_PYTHON``, ``AIMET_PYTHON``), so a crash or a missing package
becomes a row and the time and **peak resident memory** (``VmHWM``, interpreter and the
tool's imports included) are the tool's alone. Only numpy, onnx and onnxruntime are needed
besides the tool itself.

Job (JSON): ``tool`` (``onnxopt``, ``ort``, ``nncf``, ``nncf_ac``, ``aimet``,
``aimet_adaround``), ``model``, ``calib`` (.npz: key ``RRRR/input`` per run), ``out``,
``result`` (where this writes its JSON), ``options`` (tool options), and for accuracy control
``val`` (.npz: runs, and ``RRRR/labels`` per run) with ``val_metric`` (``accuracy``,
``top1`` or ``cosine`` against the fp32 model: the peers' label-free validation; or the task
metric ``module:function`` of onnxopt's budget, imported from the repository).
Result: ``status`` (``ok`` or why not), ``seconds`` (the quantization call), ``wall`` (with
imports and loading), ``peak_rss_mb``, ``notes``.

Tool settings (each at its documented best for CPU int8):
- ``ort``: onnxruntime ``quantize_static`` after ``quant_pre_process``, QDQ, per-channel int8
  weights, uint8 activations, ``calibrate_method`` from ``options["method"]``;
- ``nncf``: ``nncf.quantize`` (ONNX backend; ``ModelType.TRANSFORMER`` when the graph has
  MatMul and Softmax/LayerNorm: SmoothQuant; fast bias correction);
- ``nncf_ac``: ``nncf.quantize_with_accuracy_control`` (max drop ``options["max_drop"]``;
  SmoothQuant off on transformers: NNCF 3.4.0 reverts weights but not SmoothQuant's Mul);
- ``aimet`` / ``aimet_adaround``: ``QuantizationSimModel`` (int8 weights per channel, int8
  activations, ``min_max``, the default per-channel config) with and without
  ``apply_adaround``, exported with ``to_onnx_qdq``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script, in any venv
from rss import peak_rss_mb  # noqa: E402


def load_runs(path: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray] | None]:
    """Runs (and labels, when present) from a ``RRRR/name`` .npz: the per-run layout that
    onnxopt's ``--data`` reads too (this script also runs where onnxopt is not installed)."""
    z = np.load(path)
    runs: dict[int, dict[str, np.ndarray]] = {}
    labels: dict[int, np.ndarray] = {}
    for key in z.files:
        r, name = key.split("/", 1)
        if name in ("labels", "__label__"):  # __label__: files written before 2026-12-05
            labels[int(r)] = z[key]
        else:
            runs.setdefault(int(r), {})[name] = z[key]
    order = sorted(runs)
    return [runs[i] for i in order], ([labels[i] for i in order] if labels else None)


def save_runs(path: str, runs: list[dict[str, np.ndarray]], labels: list | None = None) -> None:
    arrays = {f"{i:04d}/{k}": v for i, r in enumerate(runs) for k, v in r.items()}
    if labels is not None:
        arrays.update({f"{i:04d}/labels": np.asarray(v) for i, v in enumerate(labels)})
    np.savez(path, **arrays)


def looks_like_transformer(model) -> bool:
    ops = {n.op_type for n in model.graph.node}
    return "MatMul" in ops and ("Softmax" in ops or "LayerNormalization" in ops)


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _validator(job: dict, fp32):
    """NNCF's validation function: accuracy with labels, else agreement/cosine with fp32, or
    a task metric ``module:function`` (``fn(runs, labels) -> 0..100``, the one onnxopt's
    budget uses; on the repository's path, with the packages it needs in this environment)."""
    runs, labels = load_runs(job["val"])
    kind = job.get("val_metric", "cosine")
    if ":" in kind:
        return _task_validator(kind, runs, labels)
    ref = [_session(fp32).run(None, r)[0] for r in runs]
    items = list(zip(runs, ref, labels or [None] * len(runs)))

    def one(y: np.ndarray, r: np.ndarray, lab) -> float:
        if kind == "accuracy":
            return float(np.mean(y.reshape(len(np.atleast_1d(lab)), -1).argmax(-1) == lab))
        if kind == "top1":
            return float(
                np.mean(
                    y.reshape(-1, y.shape[-1]).argmax(-1) == r.reshape(-1, r.shape[-1]).argmax(-1)
                )
            )
        a, b = r.ravel().astype(np.float64), y.ravel().astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def validate(model, data):
        s = _session(model)
        per = [one(s.run(None, f)[0], r, lab) for f, r, lab in data]
        return float(np.mean(per)), per

    return items, validate


def _task_validator(spec: str, runs: list, labels: list | None):
    """NNCF's validation with a task metric: the metric of all runs (0..1), and per run the
    metric of that run alone (NNCF ranks its quantizers by the per-sample values)."""
    import importlib

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module, name = spec.split(":")
    metric = getattr(importlib.import_module(module), name)
    labels = labels or [np.array([i]) for i in range(len(runs))]
    items = list(zip(runs, labels))

    def validate(model, data):
        s = _session(model)
        outs, labs = [], []
        for feed, lab in data:
            outs.append(dict(zip([o.name for o in s.get_outputs()], s.run(None, feed))))
            labs.append(lab)
        per = [metric([o], [lab]) / 100.0 for o, lab in zip(outs, labs)]
        return metric(outs, labs) / 100.0, per

    return items, validate


def run_nncf(job: dict, model, runs) -> tuple:
    os.environ.setdefault("NNCF_CI", "1")  # stubs openvino-telemetry
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    opts = job.get("options", {})
    transformer = looks_like_transformer(model)
    common = dict(
        subset_size=min(300, len(runs)),
        fast_bias_correction=True,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
    )
    notes = [f"model_type={'TRANSFORMER' if transformer else 'default'}"]
    t = time.perf_counter()
    if job["tool"] == "nncf_ac":
        adv = AdvancedQuantizationParameters()
        if transformer:
            adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=-1)
            notes.append("SmoothQuant off (NNCF 3.4.0 accuracy-control bug)")
        items, validate = _validator(job, model)
        q = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(runs),
            nncf.Dataset(items),
            validate,
            max_drop=float(opts.get("max_drop", 0.01)),
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=adv,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=int(opts.get("max_iterations", 20))
            ),
            **common,
        )
        notes.append(f"validation: {job.get('val_metric')}, max drop {opts.get('max_drop', 0.01)}")
    else:
        q = nncf.quantize(model, nncf.Dataset(runs), **common)
    return q, time.perf_counter() - t, notes


def run_aimet(job: dict, model, runs) -> tuple:
    import aimet_onnx
    from aimet_onnx.quantsim import QuantizationSimModel

    opts = job.get("options", {})
    calib = runs[: int(opts.get("max_calib", 128))]
    t = time.perf_counter()
    sim = QuantizationSimModel(
        model,
        param_type="int8",
        activation_type="int8",
        quant_scheme="min_max",
        config_file="default",
        providers=["CPUExecutionProvider"],
    )
    notes = []
    if job["tool"] == "aimet_adaround":
        iters = int(opts.get("adaround_iterations", 1000))
        aimet_onnx.apply_adaround(sim, calib, num_iterations=iters)
        notes.append(f"AdaRound {iters} iterations per layer")
    sim.compute_encodings(lambda session: [session.run(None, f) for f in calib])
    q = sim.to_onnx_qdq(prequantize_constants=True)
    return q, time.perf_counter() - t, notes


def run_ort(job: dict, model, runs) -> tuple:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = job.get("options", {}).get("method", "MinMax")
    out = job["out"]
    pre = out + ".pre.onnx"
    folders = {Path(out).parent.resolve(), Path.cwd().resolve()}
    before = {f for d in folders for f in d.glob("*.data")}
    t = time.perf_counter()
    try:
        quant_pre_process(job["model"], pre, skip_symbolic_shape=False)
    except Exception:
        # a failing pre-process (symbolic shape inference, on the PP-OCRv5 detector) leaves
        # its scratch model in the working folder, with its weights (4.7 MB a run) under a
        # random name
        for d in folders:
            for f in set(d.glob("*.data")) - before:
                f.unlink(missing_ok=True)
            (d / "sym_shape_infer_temp.onnx").unlink(missing_ok=True)
        raise

    class Reader:
        def __init__(self) -> None:
            self.it = iter(runs)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        pre,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    os.remove(pre)
    return None, time.perf_counter() - t, [f"calibrate_method={method}"]


def run_onnxopt(job: dict, model, runs) -> tuple:
    sys.path.insert(0, str(ROOT))
    from onnxopt.data import Feeds
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    opts = dict(job.get("options", {}))
    budget_kw = opts.pop("budget", {"min_cosine": 0.99})
    metric = budget_kw.pop("metric", None)
    if metric is not None:
        from onnxopt.metric import load_metric

        budget_kw["metric"] = load_metric(metric)
    passes = opts.pop("passes", ["cleanup", "fusion"])
    allow_slower = bool(opts.pop("allow_slower", False))
    latency_batch = opts.pop("latency_batch", None)
    int8 = bool(opts.pop("int8", True))
    _, labels = load_runs(job["calib"])
    t = time.perf_counter()
    pm = manager(
        [*passes, "quantize-int8"] if int8 else passes,
        budget=Budget(**budget_kw),
        options={"quantize-int8": opts} if int8 else {},
        allow_slower=allow_slower,
        latency_batch=latency_batch,
    )
    q, rep = pm.run(model, Feeds(runs, labels=labels, source="calibration"))
    dt = time.perf_counter() - t
    from onnxopt.model import save_model

    # the pass manager's model may hold weights mapped from this process's scratch file
    # (deleted at exit): onnx.save would write references to it, save_model writes the bytes
    save_model(q, job["out"])
    p = rep.passes[-1]
    notes = [f"{p.status}" + (f": {p.reason}" if p.reason else "")] + p.notes[:12]
    Path(job["result"] + ".report.json").write_text(rep.to_json())
    return None, dt, notes


TOOLS = {
    "onnxopt": run_onnxopt,
    "ort": run_ort,
    "nncf": run_nncf,
    "nncf_ac": run_nncf,
    "aimet": run_aimet,
    "aimet_adaround": run_aimet,
}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    t0 = time.perf_counter()
    res: dict = {"tool": job["tool"]}
    try:
        import onnx

        model = onnx.load(job["model"])
        runs, _ = load_runs(job["calib"])
        q, seconds, notes = TOOLS[job["tool"]](job, model, runs)
        if q is not None:
            onnx.save(q, job["out"])
        res.update(status="ok", seconds=seconds, notes=notes)
    except Exception as e:  # noqa: BLE001 - a failing tool is a row of the table
        msg = str(e).strip().splitlines()
        res.update(status="failed", notes=[f"{type(e).__name__}: {msg[0][:200] if msg else ''}"])
        res["traceback"] = traceback.format_exc()[-2000:]
    res["wall"] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_rss_mb()
    Path(job["result"]).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
