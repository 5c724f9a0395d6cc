"""``onnxopt search --executor ray`` on a real local Ray cluster (nothing mocked).

The fixture starts a head node with ``ray start --head --block`` on free ports, all on the
loopback interface, and stops it by ending that process (which stops everything it started).
``ray stop`` is not used: it stops every Ray process on the machine, other users' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from onnxopt.examples import FOLDER as EXAMPLES

EXAMPLE = EXAMPLES / "digits_cnn.onnx"
RECIPE = """
[search]
precision = ["fp32", "int8"]
min_full = 3
[prune]
ratio = [0, 0.3]
[quantize]
calibrator = ["percentile", "mse"]
"""
#: loopback only; no token authentication (Ray's token file in ~/.ray is shared by every
#: cluster on the machine: another user's new cluster may replace it under this one)
ENV = {
    **os.environ,
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray head node on this machine: (GCS address, dashboard URL)."""
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dash, client = _free_port(), _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")  # Ray's socket paths must stay short
    cmd = [
        str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", "--disable-usage-stats", f"--temp-dir={tmp}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_port(gcs, 60)
        _wait_port(dash, 60)
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: stops every process it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _search(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / name
    args = [sys.executable, "-m", "onnxopt", "search", str(EXAMPLE)]
    args += ["--data", str(EXAMPLES / "digits_test.npz"), "--batch", "40"]
    args += ["--calib-data", str(EXAMPLES / "digits_calib.npz"), "--recipe", str(recipe)]
    args += ["--max-accuracy-drop", "1", "--out", str(out), "--seed", "3", *extra]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


def _tasks(dashboard: str, prefix: str, n: int) -> list:
    """The cluster's finished tasks whose name starts with ``prefix`` (events flush late)."""
    from ray.util.state import list_tasks

    end = time.time() + 30
    while True:
        tasks = [
            t
            for t in list_tasks(address=dashboard, limit=10_000, raise_on_missing_output=False)
            if t.name.startswith(prefix) and t.state == "FINISHED"
        ]
        if len(tasks) >= n or time.time() > end:
            return tasks
        time.sleep(1)


@pytest.mark.slow
def test_search_on_a_ray_cluster_and_same_results_as_local(cluster, tmp_path):
    address, dashboard = cluster
    t0 = time.perf_counter()
    r, out = _search(tmp_path, "ray", "--executor", "ray", "--ray-address", address)
    seconds = time.perf_counter() - t0
    assert seconds < 60, seconds
    front = json.loads((out / "front.json").read_text())
    assert front["executor"].startswith(f"ray ({address})")
    assert front["chosen"] and (out / "best.onnx").is_file()
    chosen = next(p for p in front["front"] if p["id"] == front["chosen"])
    assert chosen["feasible"] and chosen["accuracy_original"] - chosen["accuracy"] <= 1
    assert chosen["node"].startswith("127.0.0.1")  # measured on the worker, named
    # the cluster ran exactly the steps and evaluations the search reports
    steps = _tasks(dashboard, "onnxopt-step:", front["computed"]["steps"])
    evals = _tasks(dashboard, "onnxopt-eval:", front["computed"]["evals"])
    assert len(steps) == front["computed"]["steps"] == 1 + 1 + 2 * 2  # exact, prune, 4 int8
    assert len(evals) == front["computed"]["evals"]
    assert {t.node_id for t in steps}  # ran on the cluster's node

    _, local = _search(tmp_path, "local", "--executor", "local")
    a = {t["id"]: t for t in json.loads((out / "trials.json").read_text())}
    b = {t["id"]: t for t in json.loads((local / "trials.json").read_text())}
    assert a.keys() == b.keys()
    columns = ("quality", "accuracy", "size_mb", "feasible")
    for tid in a:  # every cheap result; full ones where both verified it (latency decides)
        assert [a[tid]["cheap"][c] for c in columns] == [b[tid]["cheap"][c] for c in columns]
        if a[tid]["full"] and b[tid]["full"]:
            assert [a[tid]["full"][c] for c in columns] == [b[tid]["full"][c] for c in columns]
