"""benchmarks/search.py: the comparison of two searches' trial tables and the report it
writes (the searches themselves run in the benchmark, not here)."""

from __future__ import annotations

import json

from benchmarks.search import markdown, same_results


def _write(folder, trials, front):
    folder.mkdir()
    (folder / "trials.json").write_text(json.dumps(trials))
    (folder / "front.json").write_text(json.dumps({"front": [{"id": i} for i in front]}))


def _trial(tid, q, size, full=True):
    r = {"quality": q, "size_mb": size, "feasible": True, "latency_ms": 1.0}
    return {"id": tid, "cheap": r, "full": r if full else None}


def test_same_results_compares_quality_and_size_not_latency(tmp_path):
    _write(tmp_path / "a", [_trial("t1", 99.0, 1.0), _trial("t2", 98.0, 0.5)], ["t1", "t2"])
    b = [_trial("t1", 99.0, 1.0), _trial("t2", 97.0, 0.5, full=False)]
    b[0]["cheap"]["latency_ms"] = 2.0  # latency may differ
    _write(tmp_path / "b", b, ["t1"])
    s = same_results(tmp_path / "a", tmp_path / "b")
    assert s["cheap_compared"] == 2 and s["cheap_differ"] == ["t2"]
    assert s["full_compared"] == 1 and s["full_differ"] == []
    assert s["front_a"] == ["t1", "t2"] and s["front_b"] == ["t1"]


def test_markdown_has_a_section_per_measurement():
    res = {
        "model": "m",
        "metric": "accuracy %",
        "original_score": 98.0,
        "hand_score": 99.0,
        "search_score": 99.2,
        "chosen": {"label": "prune(ratio=0.5)"},
        "race": {
            "a_ms": 1.0,
            "b_ms": 0.9,
            "ratio": 0.9,
            "b_wins": 30,
            "rounds": 40,
            "p_value": 0.001,
        },
        "search_s": 100.0,
        "trials": 28,
        "ray": {
            "two_workers_s": 50.0,
            "one_worker_s": 90.0,
            "ratio": 0.56,
            "same_as_local": {
                "cheap_compared": 28,
                "cheap_differ": [],
                "full_compared": 9,
                "full_differ": [],
                "front_a": ["t1"],
                "front_b": ["t1"],
            },
        },
        "killed": {
            "total_steps": 28,
            "steps_before_kill": 14,
            "resume_computed_steps": 14,
            "resume_cached_steps": 14,
            "steps_computed_twice": 0,
            "interrupt_exit_code": 130,
        },
    }
    md = markdown([res])
    assert "| m | accuracy % | 98.00 | 99.00 | 99.20 | prune(ratio=0.5) | 1 / 0.9 (0.90x)" in md
    assert "| m | 50 s | 90 s | 0.56 | 28/28 | 9/9 | t1 | t1 |" in md
    assert "| m | 28 | 14 | 14 | 14 | 0 | 130 |" in md
    res["ray"]["ratios"] = [0.58, 0.56, 0.6]  # interleaved rounds: each shown beside the median
    assert "| m | 50 s | 90 s | 0.56 (0.58, 0.56, 0.60) | 28/28 |" in markdown([res])
