"""Raw exports (torch's dynamo exporter with optimize=False, as graph optimizers commonly get
them: every Conv bias is Expand(CastLike(0, activation), Shape(weight)), BatchNormalization
unfolded) are first-class: prune and quantize run the cleanup they need first, pruning removes
about half the MACs at --target-flops 0.5, and int8 reaches every Conv."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxopt import zoo  # noqa: E402
from onnxopt.cli.app import main  # noqa: E402
from onnxopt.summary import count_macs  # noqa: E402


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "digits_raw.onnx"
    model = zoo.torch_model("digits_resnet")
    x = torch.from_numpy(zoo.example_inputs("digits_resnet", batch=2)["input"])
    dims = ({0: torch.export.Dim("batch")},)  # by position: the forward argument
    prog = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        optimize=False,
        dynamic_shapes=dims,
        input_names=["input"],
        output_names=["logits"],
    )
    prog.save(str(path))
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["CastLike"] and ops["Expand"] and ops["BatchNormalization"]  # it is raw
    d = zoo.digits_data()
    data = path.parent / "digits.npz"
    np.savez(data, input=d["X_test"][:200], labels=d["y_test"][:200])
    return path, data


@pytest.mark.slow
def test_prune_target_flops_on_a_raw_export(raw, tmp_path):
    path, data = raw
    out = tmp_path / "pruned.onnx"
    args = [
        "prune",
        str(path),
        "-o",
        str(out),
        "--target-flops",
        "0.5",
        "--data",
        str(data),
        "--batch",
        "20",
        "--max-accuracy-drop",
        "2",
        "--allow-slower",
        "--no-latency",
    ]
    assert main(args) == 0
    before = count_macs(onnx.load(path))[0]
    after = count_macs(onnx.load(out))[0]
    assert after <= 0.55 * before, (before, after)


@pytest.mark.slow
def test_quantize_reaches_every_conv_of_a_raw_export(raw, tmp_path):
    path, data = raw
    out = tmp_path / "int8.onnx"
    args = [
        "quantize",
        str(path),
        "-o",
        str(out),
        "--data",
        str(data),
        "--batch",
        "20",
        "--max-accuracy-drop",
        "1",
        "--allow-slower",
    ]
    assert main(args) == 0
    model = onnx.load(out)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == 0 and ops["CastLike"] == 0
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    by_output = {o: n for n in model.graph.node for o in n.output}
    quantized = [
        c
        for c in convs
        if by_output.get(c.input[0]) is not None
        and by_output[c.input[0]].op_type == "DequantizeLinear"
    ]
    assert len(quantized) == len(convs) == 10
