"""benchmarks/fuzz.py end to end on a handful of graphs: both targets, both peers, the summary
by pass and by motif, the JSON file."""

from __future__ import annotations

import json

import pytest

from benchmarks import fuzz


def test_fuzz_benchmark_runs_and_counts(tmp_path, capsys):
    out = tmp_path / "fuzz.json"
    rc = fuzz.main(["--n", "4", "--seed", "3", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["graphs"] == 4 and len(data["records"]) == 4
    for t in ("onnx", "onnxruntime"):
        assert sum(s[t]["counts"].values()) == 4
        assert s[t]["by_motif"] and s[t]["by_pass"]
        assert sum(c["graphs"] for c in s[t]["by_opset"].values()) == 4
        assert sum(c["graphs"] for c in s[t]["by_type"].values()) == 4
        assert all(k.startswith("opset ") for k in s[t]["by_opset"])
    for peer in ("onnxsim", "onnxslim"):
        assert sum(s["peers"][peer]["counts"].values()) == s["peers"][peer]["judged"] > 0
    shown = capsys.readouterr().out
    assert "by pass" in shown and "by opset" in shown and "by type" in shown


def test_merge_sums_runs_over_seed_ranges(tmp_path, capsys):
    def part(seed: int, status: str) -> dict:
        outcome = {"status": status, "kept": [], "rolled_back": [], "errors": [], "culprit": ""}
        outcome.update(within_noise=False, inputs="", detail="", seconds=0.5)
        return {"seed": seed, "motifs": ["gelu"], "config": "opset 17, float32, static"}, outcome

    paths = []
    for k, statuses in enumerate((["optimized", "unchanged"], ["optimized"])):
        records = []
        for i, st in enumerate(statuses):
            rec, o = part(10 * k + i, st)
            records.append({**rec, "describe": "", "ours": {"onnx": o}, "peers": {}})
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text(json.dumps({"summary": {"seconds": 2.0}, "records": records}))
    out = tmp_path / "all.json"
    args = ["--targets", "onnx", "--peers", "", "--json", str(out), "--merge", *map(str, paths)]
    assert fuzz.main(args) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["graphs"] == 3 and s["seconds"] == 4.0
    assert s["onnx"]["counts"]["optimized"] == 2 and s["onnx"]["counts"]["unchanged"] == 1
    counts = {"graphs": 3, "optimized": 2, "unchanged": 1}
    assert s["onnx"]["by_opset"] == {"opset 17": counts}
    assert s["onnx"]["by_type"] == {"float32, static": counts}
    with pytest.raises(SystemExit, match="more than one file"):
        fuzz.main([*args[:-2], str(paths[0]), str(paths[0])])
