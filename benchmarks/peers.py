"""Optimizer jobs for ``run_all.py`` and ``optimizer_cost.py``: onnxopt pipelines and the peers.

Each job runs in a fresh subprocess (``python -m benchmarks.peers JOB.json``) so that a crash,
a hang (killed at the timeout) or a missing package becomes a row, and so that the tool's own
time and **peak resident memory** are clean: ``VmHWM`` of that process, which includes the
interpreter and the tool's imports (what a user of the tool pays).

Job kinds: ``onnxopt`` (PassManager with passes/options/budget), ``onnxopt_cli`` (the
``onnxopt`` command line with ``argv``), ``onnxsim``, ``onnxslim``,
``onnxoptimizer`` (its fuse-and-eliminate passes), ``ort_quant`` (onnxruntime ``quantize_static``,
QDQ, per-channel int8 weights, uint8 activations, one calibrator per job), ``ort_transformers``
(onnxruntime's BERT fusions, contrib ops) and ``torch_pruning`` (torch-pruning L1 magnitude,
applied to the zoo's torch model, short fine-tune on digits, then torchscript export).
onnxsim has no pruning or quantizer of its own, so torch-pruning and onnxruntime's quantizer
stand in for those.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.rss import peak_rss_mb
from onnxopt.errors import first_line

ROOT = Path(__file__).resolve().parents[1]


def run_job(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``job`` in a subprocess; always returns a dict with ``status`` ("ok" or why not)."""
    out_dir = Path(job["output"]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / (Path(job["output"]).stem + ".job.json")
    rpath = jpath.with_suffix(".result.json")
    rpath.unlink(missing_ok=True)
    jpath.write_text(json.dumps(dict(job, result=str(rpath))))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.peers", str(jpath)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    if rpath.exists():
        res = json.loads(rpath.read_text())
    else:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        res = {"status": f"crashed: {last[:200]}"}
    res["wall_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- inside the worker


def _feeds(job: dict[str, Any], model: Any) -> Any:
    from onnxopt.data import load_feeds

    return load_feeds(job["feeds"], model)


def _onnxopt(job: dict[str, Any]) -> dict[str, Any]:
    from onnxopt.model import load_model, save_model
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    model = load_model(job["input"])
    feeds = _feeds(job, model)
    calib = None
    if job.get("calib"):
        from onnxopt.data import load_feeds

        calib = load_feeds(job["calib"], model)
    budget = Budget(**job["budget"]) if job.get("budget") else None
    pm = manager(
        job["passes"],
        budget=budget,
        options=job.get("options") or {},
        verify_runs=job.get("verify_runs"),
    )
    out, report = pm.run(model, feeds, calib)
    save_model(out, job["output"])
    passes = [
        {
            "name": p.name,
            "status": p.status,
            "rewrites": p.rewrites,
            "reason": p.reason,
            "seconds": round(p.seconds, 2),
        }
        for p in report.passes
    ]
    lossy = [p for p in passes if p["name"] in job.get("lossy", [])]
    notes = [
        f"{p['name']}: {p['status']}" + (f" ({p['reason'][:80]})" if p["reason"] else "")
        for p in lossy
        if p["status"] != "kept"
    ]
    return {
        "passes": passes,
        "notes": notes,
        "pipeline_s": round(report.seconds, 2),
        "kept": sum(p["status"] == "kept" for p in passes),
    }


def _onnxopt_cli(job: dict[str, Any]) -> dict[str, Any]:
    """``onnxopt ARGV...`` as a user runs it (the CLI's imports, printing and writing included)."""
    import contextlib
    import io

    from onnxopt.cli.app import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(job["argv"])
    if rc != 0:
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        raise RuntimeError(f"exit {rc}: {last[:200]}")
    return {}


def _onnxsim(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    import onnxsim

    model, ok = onnxsim.simplify(job["input"])
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    onnx.save_model(model, job["output"])
    return {}


def _onnxslim(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    import onnxslim

    model = onnxslim.slim(job["input"])
    onnx.save_model(model, job["output"])
    return {}


def _onnxoptimizer(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    import onnxoptimizer

    model = onnxoptimizer.optimize(
        onnx.load(job["input"]), onnxoptimizer.get_fuse_and_elimination_passes()
    )
    onnx.save_model(model, job["output"])
    return {}


def _ort_quant(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    feeds = _feeds(job, onnx.load(job["input"], load_external_data=False))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds.runs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    big = Path(job["input"]).stat().st_size > 1_500_000_000
    quantize_static(
        job["input"],
        job["output"],
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, job["calibrator"]),
        use_external_data_format=big,
    )
    return {"notes": [f"calibrator {job['calibrator']}"]}


def _ort_transformers(job: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.transformers import optimizer

    m = optimizer.optimize_model(
        job["input"],
        model_type="bert",
        num_heads=job["heads"],
        hidden_size=job["hidden"],
        opt_level=0,
    )
    m.save_model_to_file(job["output"])
    fused = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
    return {"notes": [", ".join(f"{k} {v}" for k, v in sorted(fused.items()))[:120]]}


def _torch_pruning(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch_pruning as tp

    from onnxopt import zoo

    torch.set_num_threads(1)
    torch.manual_seed(0)
    name = job["model"]
    model = zoo.torch_model(name)
    s = zoo.spec(name)
    ex = {k: torch.from_numpy(v) for k, v in zoo.example_inputs(name).items()}
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        model,
        tuple(ex.values()),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=job["ratio"],
        ignored_layers=[last],
    )
    pruner.step()
    notes = [f"L1 magnitude {job['ratio']:.0%}"]
    if s.kind == "digits":  # a short fine-tune, as torch-pruning's recipe expects
        d = zoo.digits_data()
        x, y = torch.from_numpy(d["X_train"]), torch.from_numpy(d["y_train"])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(job.get("epochs", 5)):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        notes.append(f"fine-tuned {job.get('epochs', 5)} epochs")
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(ex.values()),
            job["output"],
            dynamo=False,
            opset_version=17,
            input_names=list(s.inputs),
            output_names=list(s.outputs),
            dynamic_axes={s.inputs[0]: {0: "batch"}} if s.kind != "bert" else None,
        )
    return {"notes": notes}


KINDS = {
    "onnxopt": _onnxopt,
    "onnxopt_cli": _onnxopt_cli,
    "onnxsim": _onnxsim,
    "onnxslim": _onnxslim,
    "onnxoptimizer": _onnxoptimizer,
    "ort_quant": _ort_quant,
    "ort_transformers": _ort_transformers,
    "torch_pruning": _torch_pruning,
}


def _worker(path: str) -> None:
    job = json.loads(Path(path).read_text())
    t0 = time.perf_counter()
    try:
        extra = KINDS[job["kind"]](job)
        res: dict[str, Any] = {"status": "ok", **extra}
    except ModuleNotFoundError as e:
        res = {"status": f"not installed: {e.name}"}
    except Exception as e:
        res = {
            "status": f"failed: {type(e).__name__}: {first_line(e, 200)}",
            "traceback": traceback.format_exc()[-2000:],
        }
    res["seconds"] = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = peak_rss_mb()
    # CPU time of every thread of the worker (onnxruntime's pools included): what the tool
    # costs regardless of how loaded a shared machine is
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    Path(job["result"]).write_text(json.dumps(res, default=str))


if __name__ == "__main__":
    _worker(sys.argv[1])
