"""Provenance: new nodes name the original nodes they came from, through every kind of pass,
and the record survives save, load and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxopt import provenance
from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.model import load_model, save_model
from onnxopt.passes.cleanup.identity import RemoveIdentity
from onnxopt.passes.fusion.conv_bn import FoldBatchNorm
from onnxopt.passes.fusion.layernorm import FuseLayerNorm
from onnxopt.passes.registry import manager
from tests.helpers import apply, parse, random_feeds

R = np.random.default_rng(0)


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a name, as exporters do (the text format leaves them empty)."""
    for i, n in enumerate(model.graph.node):
        n.name = f"{n.op_type}_{i}"
    return model


CONV_BN = """<ir_version: 8, opset_import: ["": 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
  b = BatchNormalization(c, s, bb, m, v)
  y = Relu(b)
}"""


def conv_bn() -> onnx.ModelProto:
    inits = {
        "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "cb": R.standard_normal(4).astype(np.float32),
        "s": R.uniform(0.5, 2, 4).astype(np.float32),
        "bb": R.standard_normal(4).astype(np.float32),
        "m": R.standard_normal(4).astype(np.float32),
        "v": R.uniform(0.5, 2, 4).astype(np.float32),
    }
    return named(parse(CONV_BN, inits))


def test_metadata_round_trip_and_original_nodes_are_their_own_origin():
    n = onnx.helper.make_node("Relu", ["x"], ["y"], name="r")
    assert provenance.from_proto(n) is None and provenance.origins(n) == ("r",)
    provenance.set_proto(n, ["a", "b"])
    provenance.set_proto(n, ["a", "c"])  # replaces, does not add a second entry
    assert provenance.from_proto(n) == ("a", "c")
    assert [e.key for e in n.metadata_props] == [provenance.KEY]


def test_fold_batchnorm_records_both_nodes_and_survives_save_load_and_ort(tmp_path):
    m = conv_bn()
    _, out = apply(FoldBatchNorm, m)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert set(provenance.origins(conv)) == {"Conv_0", "BatchNormalization_1"}
    relu = next(n for n in out.graph.node if n.op_type == "Relu")
    assert provenance.from_proto(relu) is None  # untouched nodes carry nothing
    path = save_model(out, tmp_path / "fused.onnx")
    back = load_model(path)
    conv2 = next(n for n in back.graph.node if n.op_type == "Conv")
    assert set(provenance.origins(conv2)) == {"Conv_0", "BatchNormalization_1"}
    onnx.checker.check_model(back, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, random_feeds(back))[0].shape == (1, 4, 8, 8)


LN = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,5,8] x) => (float[2,5,8] y) {
  mu = ReduceMean<axes=[-1]>(x)
  d = Sub(x, mu)
  p = Mul(d, d)
  var = ReduceMean<axes=[-1]>(p)
  e = Add(var, eps)
  sd = Sqrt(e)
  nrm = Div(d, sd)
  k = Mul(nrm, gamma)
  z = Add(k, beta)
  y = Tanh(z)
}"""


def test_fusion_new_node_comes_from_every_matched_node():
    inits = {
        "eps": np.float32(1e-5),
        "gamma": R.standard_normal(8).astype(np.float32),
        "beta": R.standard_normal(8).astype(np.float32),
    }
    m = named(parse(LN, inits))
    _, out = apply(FuseLayerNorm, m)
    ln = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    originals = {n.name for n in m.graph.node if n.op_type != "Tanh"}
    assert set(provenance.origins(ln)) == originals


def test_removed_identity_goes_to_the_node_that_reads_its_input():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[4] x) => (float[4] y) {
      a = Relu(x)
      b = Identity(a)
      y = Neg(b)
    }"""
    m = named(parse(text))
    _, out = apply(RemoveIdentity, m)
    assert [n.op_type for n in out.graph.node] == ["Relu", "Neg"]
    heir = [n for n in out.graph.node if "Identity_1" in provenance.origins(n)]
    assert len(heir) == 1


class _Rename(Pass):
    """A rewrite that knows nothing of provenance: replaces Relu by a new Clip node."""

    name = "test-relu-to-clip"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        n = 0
        for node in list(graph.nodes):
            if node.op == "Relu":
                x, y = node.inputs[0], node.outputs[0]
                node.inputs.clear()
                node.outputs.clear()
                lo = gs.Constant(f"{node.name}_lo", np.zeros((), np.float32))
                graph.nodes.append(gs.Node("Clip", f"clip_{n}", inputs=[x, lo], outputs=[y]))
                n += 1
        return PassResult(n > 0, n)


def test_a_pass_that_records_nothing_is_covered_by_the_generic_record():
    m = conv_bn()
    # two passes in a row on one working copy, as the manager's batches run them
    pm = manager([FoldBatchNorm(), _Rename()], batch_exact=True)
    out, rep = pm.run(m)
    assert [p.status for p in rep.passes] == ["kept", "kept"]
    origins = {n.op_type: set(provenance.origins(n)) for n in out.graph.node}
    assert origins["Conv"] == {"Conv_0", "BatchNormalization_1"}
    assert origins["Clip"] == {"Relu_2"}


def test_int8_qdq_nodes_come_from_the_node_they_quantize():
    from onnxopt.data import Feeds
    from onnxopt.passes.quantize import QuantizeInt8

    m = conv_bn()
    feeds = Feeds([random_feeds(m, seed=i) for i in range(16)])
    # every layer in int8, whatever this CPU's per-layer timings say
    res, out = apply(
        QuantizeInt8.from_options({"latency_aware": False}), m, PassContext(feeds=feeds)
    )
    assert res.changed
    by_op: dict[str, set[str]] = {}
    for n in out.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            by_op.setdefault(n.op_type, set()).update(provenance.origins(n))
    assert by_op["QuantizeLinear"] and by_op["DequantizeLinear"]
    assert by_op["DequantizeLinear"] <= {"Conv_0", "BatchNormalization_1", "Relu_2"}
    assert all(not o.endswith("Linear") for o in by_op["QuantizeLinear"])
