"""`onnxopt demo`, the README's first command after the install, end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.examples import FOLDER as EXAMPLES


def test_demo_runs_the_pipeline_and_writes_a_verified_model(demo_run):
    r, out = demo_run
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    passes = {p["name"]: p for p in report["passes"]}
    # a lossy pass is kept within the budget, or rolled back for a stated reason: over the
    # budget, or a model no faster than its input; int8 may also leave the model float
    # because each layer measured slower in int8 on this CPU, or because its latency profile
    # times the int8 placement no faster than float (which pass pays on this tiny model
    # depends on the machine; the speed gate and the placement are tested on their own)
    for name in ("prune", "quantize-int8"):
        p = passes[name]
        assert p["status"] in ("kept", "rolled back", "unchanged"), p
        if p["status"] == "rolled back":
            assert p["reason"].startswith(("not faster", "over budget")), p["reason"]
        if p["status"] == "unchanged":
            assert name == "quantize-int8", p
            why = ("slower in int8 on this CPU", "int8 does not make this model faster")
            assert any(w in n for n in p["notes"] for w in why), p["notes"]
    assert report["accuracy_final"] >= report["accuracy_original"] - 1.0  # the demo's budget
    model = onnx.load(out / "digits_cnn.opt.onnx")
    onnx.checker.check_model(model)
    quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert quantized == (passes["quantize-int8"]["status"] == "kept")
    data = np.load(EXAMPLES / "digits_test.npz")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = data[name][:40]
    acc = float((sess.run(None, {name: x})[0].argmax(-1) == data["labels"][:40]).mean())
    assert acc > 0.9
    assert "latency in ms" in r.stdout
    assert (out / "report.html").stat().st_size > 10_000  # the page (tests/onnxopt/html)
