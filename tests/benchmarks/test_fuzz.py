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
        assert sum(c["graphs"] for c in s[t]["by_config"].values()) == 4
        assert all(k.startswith("opset ") for k in s[t]["by_config"])
    for peer in ("onnxsim", "onnxslim"):
        assert sum(s["peers"][peer]["counts"].values()) == s["peers"][peer]["judged"] > 0
    shown = capsys.readouterr().out
    assert "by pass" in shown and "by opset and type" in shown
