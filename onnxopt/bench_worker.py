"""The isolated benchmark subprocess and its parent side.

Each (model, batch) is timed in a fresh ``python`` process so that its peak memory is its own.
The child's stdout is the protocol to the parent (``progress DONE TOTAL``, ``result JSON`` or
``error JSON``, one per line): it is not user output, and it is the only place outside the CLI
that writes to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.bench import Progress, measure
from onnxopt.errors import ModelError, OptionError


def child() -> None:
    """Entry point of the isolated subprocess: reads a JSON job, prints progress and a result."""
    job = json.loads(Path(sys.argv[1]).read_text())
    with np.load(job["feeds"], allow_pickle=False) as z:
        runs: list[dict[str, np.ndarray]] = [{} for _ in range(job["nruns"])]
        for key in z.files:
            i, name = key.split("/", 1)
            runs[int(i)][name] = z[key]

    def report(what: str, done: float, total: float) -> None:
        print(f"progress {done} {total}", flush=True)

    try:
        out = measure(job["path"], runs, provider=job["provider"], threads=job["threads"],
                      optimization=job["optimization"], warmup=job["warmup"], runs=job["runs"],
                      seconds=job["seconds"], progress=report, isolated=True)
    except Exception as e:  # noqa: BLE001 - sent to the parent as one line
        print("error " + json.dumps({"type": type(e).__name__, "message": str(e)}), flush=True)
        return
    print("result " + json.dumps(out), flush=True)


def measure_isolated(path: str, runs_feeds: list[dict[str, np.ndarray]], progress: Progress | None,
                      **kw: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **{f"{i}/{k}": v for i, r in enumerate(runs_feeds)
                                for k, v in r.items()})
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"path": path, "feeds": str(feeds_path),
                                   "nruns": len(runs_feeds), **kw}))
        code = "from onnxopt.bench_worker import child; child()"
        proc = subprocess.Popen([sys.executable, "-c", code, str(job)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        result: dict[str, Any] | None = None
        error: dict[str, str] | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "progress" and progress is not None:
                done, total = (float(v) for v in rest.split())
                progress("run", done, total)
            elif kind == "result":
                result = json.loads(rest)
            elif kind == "error":
                error = json.loads(rest)
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    if error is not None:
        cls = ModelError if error["type"] == "ModelError" else OptionError
        raise cls(error["message"])
    if result is None:
        last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ModelError(f"{path}: benchmark subprocess failed ({last[:200]})")
    return result
