"""The isolated benchmark subprocess (its parent side is :func:`onnxopt.bench.measure_isolated`).

Each (model, batch) is timed in a fresh ``python`` process so that its peak memory is its own.
The child's stdout is the protocol to the parent (``progress DONE TOTAL``, ``result JSON`` or
``error JSON``, one per line): it is not user output, and it is the only place outside the CLI
that writes to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from onnxopt.timing import measure


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
        out = measure(
            job["path"],
            runs,
            provider=job["provider"],
            threads=job["threads"],
            optimization=job["optimization"],
            warmup=job["warmup"],
            runs=job["runs"],
            seconds=job["seconds"],
            progress=report,
            isolated=True,
        )
    except Exception as e:
        print("error " + json.dumps({"type": type(e).__name__, "message": str(e)}), flush=True)
        return
    print("result " + json.dumps(out), flush=True)
