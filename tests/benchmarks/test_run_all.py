"""benchmarks/run_all.py: Pareto front, rows for failing peers, the report; --quick (slow)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmarks import peers, run_all
from benchmarks.run_all import Row


def _rows() -> list[Row]:
    return [
        Row("digits_resnet", "original", "-", p50_ms=1.0, metric=98.0, speedup=1.0),
        Row("digits_resnet", "exact", "onnxopt", p50_ms=0.9, metric=98.0, opt_s=1.0),
        Row("digits_resnet", "int8", "onnxopt", p50_ms=0.5, metric=97.5, opt_s=2.0),
        Row("digits_resnet", "slow and worse", "peer", p50_ms=2.0, metric=90.0),
        Row("digits_resnet", "broken", "peer", status="failed: ValueError: boom"),
    ]


def test_pareto_front():
    front = run_all.pareto(_rows())
    assert [r.variant for r in front] == ["int8", "exact"]


def test_best_calibrator_keeps_one_row():
    rows = (
        [Row("m", "original", "-", metric=90.0, p50_ms=1.0)]
        + [
            Row("m", f"int8 static ({c})", "ort quantize_static", metric=m, p50_ms=0.5)
            for c, m in (("MinMax", 80.0), ("Percentile", 85.0))
        ]
        + [Row("m", "int8 static (Entropy)", "ort quantize_static", status="timeout after 9 s")]
    )
    out = run_all._best_calibrator(rows)
    q = [r for r in out if r.tool == "ort quantize_static"]
    assert len(q) == 1 and q[0].metric == 85.0
    assert "Percentile: 85.00" in q[0].notes[-1] and "Entropy: timeout" in q[0].notes[-1]


def test_markdown_and_plot(tmp_path):
    rows = _rows()
    png = run_all.plot("digits_resnet", rows, tmp_path / "plots" / "digits_resnet.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = argparse.Namespace(quick=True, runs=5)
    md = run_all.markdown(
        {"digits_resnet": rows}, {"digits_resnet": png}, tmp_path / "RESULTS.md", args, 12.0
    )
    assert "## digits_resnet" in md and "](plots/digits_resnet.png)" in md
    assert "| peer | broken | failed: ValueError: boom |" in md
    assert "| onnxopt | int8 * |" in md  # on the frontier


def test_metric_kinds():
    labels = np.array([0, 1, 2])
    logits = np.eye(3, dtype=np.float32)
    assert run_all.metric("digits_resnet", [logits], [], labels) == 100.0
    ref = [np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])]
    assert (
        run_all.metric("resnet18", [np.array([[0.0, 2.0]]), np.array([[0.0, 1.0]])], ref, None)
        == 50.0
    )
    assert run_all.metric("bert_small", ref, ref, None) == pytest.approx(100.0)


def test_failing_peer_is_a_row_not_a_crash(tmp_path):
    job = {
        "kind": "onnxsim",
        "input": str(tmp_path / "missing.onnx"),
        "output": str(tmp_path / "out" / "x.onnx"),
    }
    res = peers.run_job(job, timeout=120)
    assert res["status"].startswith("failed:") or res["status"].startswith("not installed")
    assert res["peak_rss_mb"] > 0
    res = peers.run_job(dict(job, kind="no-such-tool"), timeout=120)
    assert res["status"].startswith("failed: KeyError")


def test_jobs_cover_the_issue(tmp_path):
    js = run_all.jobs("bert_small", tmp_path / "m.onnx", tmp_path / "f.npz", tmp_path, quick=False)
    tools = {t for _, t, _ in js}
    assert tools == {
        "onnxopt",
        "onnxsim",
        "onnxslim",
        "onnxoptimizer",
        "ort quantize_static",
        "ort transformers",
    }
    variants = [v for v, t, _ in js if t == "onnxopt"]
    assert variants == ["exact", "exact + int8", "exact + prune 50%", "prune + distill + int8"]
    js = run_all.jobs(
        "digits_resnet", tmp_path / "m.onnx", tmp_path / "f.npz", tmp_path, quick=True
    )
    assert "torch-pruning" in {t for _, t, _ in js}
    assert len({j["output"] for _, _, j in js}) == len(js)


@pytest.mark.slow
def test_run_all_quick(tmp_path):
    assert run_all.main(["--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    for name in run_all.QUICK:
        assert f"## {name}" in md
        assert (tmp_path / "plots" / f"{name}.png").exists()
    data = json.loads((tmp_path / "results.json").read_text())
    base = data["digits_resnet"][0]
    assert base["status"] == "ok" and base["metric"] >= 97.0 and base["p50_ms"] > 0
    exact = next(r for r in data["digits_resnet"] if r["variant"] == "exact")
    assert exact["status"] == "ok" and exact["metric"] == pytest.approx(base["metric"])
