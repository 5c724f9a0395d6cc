"""The converter's torch-free side: node order, attributes, trainable initializers, keys."""

from __future__ import annotations

import subprocess
import sys

import onnx.parser
import pytest

from onnxopt.errors import ModelError
from onnxopt.onnx2torch.graph import nodes_of, sanitize, toposort, trainable_names

MODEL = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,3] x) => (float[2,3] y)
    <float[3] w = {1.0, 2.0, 3.0}, float e = {2.0}, float[3] c = {0.0, 0.5, 1.0}> {
    y = Mul(p, w)
    p = Pow(x, e)
    }"""


def test_sanitize_names_are_unique_and_safe() -> None:
    taken: set[str] = set()
    keys = [sanitize(n, taken) for n in ["layer1.0.weight", "layer1_0_weight", "0.bias", ""]]
    assert len(set(keys)) == 4
    assert all("." not in k and k and not k[0].isdigit() for k in keys)


def test_nodes_in_executable_order_with_names() -> None:
    model = onnx.parser.parse_model(MODEL)
    assert [n.op_type for n in toposort(model.graph)] == ["Pow", "Mul"]
    assert [(n.name, n.op) for n in nodes_of(model.graph)] == [("Pow_0", "Pow"), ("Mul_1", "Mul")]


def test_operands_scalars_and_unused_weights() -> None:
    # the Pow exponent is an operand, c is a weight nothing reads (still trainable)
    assert trainable_names(onnx.parser.parse_model(MODEL)) == {"w", "c"}


def test_a_cycle_is_a_model_error() -> None:
    model = onnx.parser.parse_model(MODEL)
    model.graph.node[0].input[0] = "y"  # Mul(y, w) -> y
    with pytest.raises(ModelError, match="cycle or undefined inputs"):
        toposort(model.graph)


def test_importing_the_converter_does_not_import_torch() -> None:
    code = "import sys, onnxopt.onnx2torch; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
