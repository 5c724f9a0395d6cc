"""benchmarks/fuzz.py end to end on a handful of graphs: both targets, both peers, the summary
by pass and by motif, the JSON file."""

from __future__ import annotations

import json

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
    for peer in ("onnxsim", "onnxslim"):
        assert sum(s["peers"][peer]["counts"].values()) == s["peers"][peer]["judged"] > 0
    assert "by pass" in capsys.readouterr().out
