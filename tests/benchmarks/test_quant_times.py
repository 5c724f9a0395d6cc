"""benchmarks/quant_times.py: interleaved repeats of the int8 benchmark's jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks import quant_times as qt

ROOT = Path(__file__).resolve().parents[2]


def test_rounds_alternate_the_order_of_the_tools() -> None:
    assert qt.rounds_order(["onnxopt", "nncf"], 0) == ["onnxopt", "nncf"]
    assert qt.rounds_order(["onnxopt", "nncf"], 1) == ["nncf", "onnxopt"]


def test_summary_gives_medians_ranges_and_the_rounds_ratios() -> None:
    got = qt.summarize({"onnxopt": [20.0, 30.0, None, 24.0], "nncf": [10.0, 15.0, 12.0, 12.0]})
    o, n = got["onnxopt"], got["nncf"]
    assert (o["runs"], o["median"], o["min"], o["max"]) == (3, 24.0, 20.0, 30.0)
    assert n["median"] == 12.0 and "ratio_of_medians" not in n
    assert o["ratio_of_medians"] == 2.0
    assert o["median_round_ratio"] == 2.0  # rounds 20/10, 30/15, 24/12; the failed one out
    text = qt.render({"m": got}, 4, "python benchmarks/quant_times.py")
    assert "| m | onnxopt | 24.0 | 20.0–30.0 | 20.0, 30.0, –, 24.0 | 2.00 | 2.00 |" in text
    paths = {"onnxopt": ["kept", "rolled back", "failed", "unchanged"], "nncf": [""] * 4}
    got = qt.summarize({"onnxopt": [20.0, 30.0, None, 24.0], "nncf": [10.0] * 4}, "nncf", paths)
    text = qt.render({"m": got}, 4, "python benchmarks/quant_times.py")
    assert "20.0 (kept), 30.0 (rolled back), – (failed), 24.0 (unchanged)" in text


def test_the_phases_of_onnxopt_readings_are_summed_up_per_phase() -> None:
    """Each phase's median over the readings, and the median of each reading's seconds
    outside timing (here 7 and 9.5: 8.25), against NNCF's median."""
    phases = {
        "onnxopt": [
            {"timing": 5.0, "checking outputs": 4.0, "task metric": 3.0},
            {"timing": 3.0, "checking outputs": 6.0, "task metric": 3.0, "other": 0.5},
        ]
    }
    got = qt.summarize({"onnxopt": [12.0, 12.5], "nncf": [4.0, 4.0]}, "nncf", None, phases)
    o = got["onnxopt"]
    assert o["phases"]["timing"] == 4.0 and o["phases"]["other"] == 0.25
    assert o["untimed"] == 8.25 and o["untimed_readings"] == [7.0, 9.5]
    assert "phases" not in got["nncf"]
    text = qt.render({"m": got}, 2, "python benchmarks/quant_times.py")
    row = (
        "| m | onnxopt | 4.0 | 5.0 | 3.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.2 "
        "| 8.2 (2.06x); readings 7.0–9.5 | 4.0 |"
    )
    assert row in text


def test_a_missing_job_file_is_one_line_and_exit_2(tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quant_times.py"), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no job file" in r.stderr and "Traceback" not in r.stderr


def test_a_job_runs_again_in_a_scratch_folder_and_is_timed(tmp_path) -> None:
    """A real onnxopt job (exact passes on a two-node graph) run twice; the job's own model
    and result files are not touched."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    case = tmp_path / "tiny"
    case.mkdir()
    onnx.save(model, case / "fp32.onnx")
    rng = np.random.default_rng(0)
    np.savez(
        case / "calib.npz", **{f"{i:04d}/x": rng.normal(size=(1, 4)).astype("f4") for i in range(4)}
    )
    job = {
        "tool": "onnxopt",
        "options": {"budget": {"min_cosine": 0.99}, "int8": False},
        "model": str(case / "fp32.onnx"),
        "calib": str(case / "calib.npz"),
        "out": str(case / "onnxopt.onnx"),
        "result": str(case / "onnxopt.json"),
    }
    (case / "onnxopt.job.json").write_text(json.dumps(job))
    out = tmp_path / "times.md"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "quant_times.py"),
            "--work",
            str(tmp_path),
            "--models",
            "tiny",
            "--tools",
            "onnxopt",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert not (case / "onnxopt.onnx").exists() and not (case / "onnxopt.json").exists()
    got = json.loads(out.with_suffix(".json").read_text())["tiny"]["onnxopt"]
    assert got["runs"] == 2 and all(s > 0 for s in got["seconds"])
    assert got["outcomes"] == ["unchanged"] * 2  # the status of the job's last pass
    assert "checking outputs" in got["phases"]  # read from each run's report
    assert "| tiny | onnxopt |" in out.read_text()


def test_a_reading_of_an_earlier_commit_runs_the_job_with_its_code(tmp_path: Path) -> None:
    """``--base REV``: the same job file, written for the reading under a name of its own
    (``TOOL_at_REV``), handed to the earlier commit's runner (:class:`quant_times.Base`,
    stubbed here: its worktree and virtual environment take a pip install); the ratios are
    then to the first tool when NNCF is not timed."""
    job = tmp_path / "onnxopt_2pt.job.json"
    job.write_text(json.dumps({"tool": "onnxopt", "out": "x.onnx", "result": "x.json"}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    class Earlier:
        def run(self, jpath: Path, cwd: Path) -> dict:
            return {"status": "ok", "seconds": 1.0, "job": json.loads(jpath.read_text())}

    got = qt.rerun(job, "onnxopt_2pt@c1e5eca", scratch, Earlier())
    assert got["job"]["result"] == str(scratch / "onnxopt_2pt_at_c1e5eca.json")
    assert got["job"]["out"] == str(scratch / "onnxopt_2pt_at_c1e5eca.onnx")
    rows = qt.summarize(
        {"onnxopt_2pt": [30.0, 40.0], "onnxopt_2pt@c1e5eca": [36.0, 36.0]}, "onnxopt_2pt"
    )
    text = qt.render({"ocr_rec": rows}, 2, "python benchmarks/quant_times.py", "onnxopt_2pt")
    assert "median / `onnxopt_2pt`'s median" in text
    assert "| ocr_rec | onnxopt_2pt@c1e5eca | 36.0 | 36.0–36.0 | 36.0, 36.0 | 1.03 |" in text
