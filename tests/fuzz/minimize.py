"""Shrinking a failing fuzzed graph, and saving it as a regression case.

:func:`minimize` is delta debugging over the ONNX graph itself (the generator's choices are
not replayed): it keeps reducing while the predicate still holds,

1. keeping a single graph output (dead nodes, initializers and inputs pruned);
2. for each node, last first: *bypassing* it (its output replaced by one of its inputs of the
   same type and shape), or *cutting* it (its output becomes a new graph input when it is a
   float tensor, or an initializer holding the value it had on the verification inputs);

until a whole round changes nothing or the check budget is spent. Values and shapes come from
one onnxruntime run of the current graph with every node output exposed.

:func:`save` writes the case as ``tests/fuzz/regressions/<name>.onnx`` with what the test needs
in ``metadata_props`` (inputs and their ranges, target, the pass and what went wrong);
:func:`load` reads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.fuzz import feeds as fz_feeds
from tests.fuzz.builder import InputInfo
from tests.fuzz.generator import Case, _used_names

logger = logging.getLogger(__name__)

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def minimize(case: Case, fails: Callable[[Case], bool], *, budget: int = 300) -> Case:
    """The smallest case found that still ``fails`` (``case`` itself must fail)."""
    checks = 0

    def attempt(candidate: Case | None) -> bool:
        nonlocal checks
        if candidate is None or checks >= budget:
            return False
        checks += 1
        try:
            return fails(candidate)
        except Exception:  # noqa: BLE001 - a reduction that breaks the graph is just rejected
            return False

    for i in range(len(case.model.graph.output)):
        if len(case.model.graph.output) > 1 and attempt(_only_output(case, i)):
            case = _only_output(case, i)
            break
    changed = True
    while changed and checks < budget:
        changed = False
        values = _values(case)
        for idx in reversed(range(len(case.model.graph.node))):
            if idx >= len(case.model.graph.node):
                continue
            for make in (_bypass, _cut):
                candidate = make(case, idx, values)
                if attempt(candidate):
                    case, changed = candidate, True
                    values = _values(case)
                    break
    logger.info("minimized to %d nodes in %d checks", len(case.model.graph.node), checks)
    return case


# ---------------------------------------------------------------------------------------------
# reductions


def _only_output(case: Case, i: int) -> Case:
    model = _copy(case.model)
    keep = model.graph.output[i]
    del model.graph.output[:]
    model.graph.output.append(keep)
    return _pruned(case, model)


def _bypass(case: Case, idx: int, values: dict[str, np.ndarray]) -> Case | None:
    node = case.model.graph.node[idx]
    if len(node.output) != 1 or node.output[0] not in values:
        return None
    out = values[node.output[0]]
    for name in node.input:
        v = values.get(name)
        if name and v is not None and v.dtype == out.dtype and v.shape == out.shape:
            model = _copy(case.model)
            _rename_uses(model.graph, node.output[0], name)
            del model.graph.node[idx]
            return _pruned(case, model)
    return None


def _cut(case: Case, idx: int, values: dict[str, np.ndarray]) -> Case | None:
    node = case.model.graph.node[idx]
    if node.op_type == "Constant" or any(o not in values for o in node.output if o):
        return None
    model = _copy(case.model)
    del model.graph.node[idx]
    inputs = list(case.inputs)
    for name in node.output:
        if not name:
            continue
        v = values[name]
        if v.dtype.kind == "f":
            elem = helper.np_dtype_to_tensor_dtype(v.dtype)
            model.graph.input.append(helper.make_tensor_value_info(name, elem, list(v.shape)))
            inputs.append(InputInfo(name, tuple(v.shape), elem, False))
        else:
            model.graph.initializer.append(numpy_helper.from_array(v, name))
    return _pruned(replace(case, inputs=inputs), model)


# ---------------------------------------------------------------------------------------------
# helpers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _rename_uses(g: onnx.GraphProto, old: str, new: str) -> None:
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_uses(a.g, old, new)
    if any(o.name == old for o in g.output):  # an output keeps its name: an Identity feeds it
        g.node.append(helper.make_node("Identity", [new], [old], name=f"keep_{old}"))


def _pruned(case: Case, model: onnx.ModelProto) -> Case:
    """Drop nodes nothing needs, then unused initializers, value_info and inputs."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= set(node.input)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    needed |= _used_names(a.g)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = _used_names(g)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if any(v.name in n.output for n in g.node)]
    del g.value_info[:]
    g.value_info.extend(vis)
    ins = [i for i in g.input if i.name in used]
    del g.input[:]
    g.input.extend(ins)
    names = {i.name for i in ins}
    return replace(case, model=model, inputs=[i for i in case.inputs if i.name in names])


def _values(case: Case) -> dict[str, np.ndarray]:
    """Every main-graph tensor's value on the first verification input (those onnxruntime
    can expose as outputs)."""
    import onnxruntime as ort

    model = _copy(case.model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({o.name: o.type.tensor_type.elem_type for o in model.graph.output})
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have and types.get(name):
                model.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
                have.add(name)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in sess.get_outputs()]
        run = fz_feeds.verification(case.inputs, runs=1)[0]
        return dict(zip(names, sess.run(names, run), strict=True))
    except Exception:  # noqa: BLE001 - then nothing is cut or bypassed
        return {}


# ---------------------------------------------------------------------------------------------
# regression files


def save(case: Case, name: str, *, target: str, passes: str, what: str) -> Path:
    """Write ``case`` under :data:`REGRESSIONS`; ``passes`` names the pass that was wrong and
    ``what`` says how (both go in the model's metadata)."""
    model = _copy(case.model)
    meta = {
        "fuzz.inputs": json.dumps([asdict(i) for i in case.inputs]),
        "fuzz.target": target,
        "fuzz.pass": passes,
        "fuzz.bug": what,
        "fuzz.origin": case.describe(),
        "fuzz.specials": json.dumps(case.specials),
        "fuzz.dynamic": case.dynamic,
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    path = REGRESSIONS / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def load(path: Path) -> tuple[Case, dict[str, str]]:
    """A saved regression case and its metadata."""
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = [
        InputInfo(**{**d, "shape": tuple(d["shape"])}) for d in json.loads(meta["fuzz.inputs"])
    ]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    case = Case(
        seed=-1,
        model=model,
        inputs=inputs,
        motifs=[path.stem],
        opset=opset,
        dynamic=meta.get("fuzz.dynamic", ""),
        specials=json.loads(meta.get("fuzz.specials", "false")),
    )
    return case, meta
