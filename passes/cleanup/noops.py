"""remove-noops: drop nodes that return their input unchanged.

With ``x`` of known dtype and (where needed) static shape ``s``:
- ``Cast(x, to=dtype(x))``, ``CastLike(x, y)`` with ``dtype(y) = dtype(x)``;
- ``Transpose(x, perm)`` with ``perm = (0, 1, ..., r-1)`` (no ``perm`` reverses: a no-op for r <= 1);
- ``Reshape(x, t)`` where ``t`` (``0`` copies a dim unless ``allowzero``, ``-1`` is inferred) gives s;
- ``Expand(x, t)`` where ``broadcast(s, t) = s``;  ``Tile(x, r)`` with every ``r = 1``;
- ``Slice`` whose steps are all 1 and whose range covers every sliced axis;
- ``Pad`` with all-zero pads;
- ``Concat``, ``Sum``, ``Max``, ``Min``, ``Mean`` with a single input.
Facts come from onnx shape inference on a copy (see ``_util.infer_facts``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import (
    const_value,
    is_empty_tensor,
    merge_tensors,
    node_names_unique,
    opset_version,
)
from onnxopt.passes.cleanup._util import (
    STANDARD_DOMAINS,
    TypeShape,
    detach,
    infer_facts,
)

logger = logging.getLogger(__name__)

Facts = dict[str, TypeShape]


def _static(facts: Facts, t: gs.Tensor) -> tuple[int, ...] | None:
    ts = facts.get(t.name)
    return ts.static_shape if ts is not None else None


def _dtype(facts: Facts, t: gs.Tensor) -> np.dtype | None:
    ts = facts.get(t.name)
    return ts.dtype if ts is not None else None


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    if len(node.inputs) <= i or is_empty_tensor(node.inputs[i]):
        return None
    return node.inputs[i]


def _cast(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    src = _dtype(facts, node.inputs[0])
    if src is None:
        return "input dtype unknown"
    try:
        to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    except Exception:
        return "target dtype has no numpy equivalent"
    if to != src or to.kind in "OSU":
        return f"casts {src} to {to}"
    return None


def _cast_like(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    a, b = _dtype(facts, node.inputs[0]), _dtype(facts, node.inputs[1])
    if a is None or b is None:
        return "dtypes unknown"
    return None if a == b and a.kind not in "OSU" else f"casts {a} to {b}"


def _transpose(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    perm = node.attrs.get("perm")
    if perm is None:
        ts = facts.get(node.inputs[0].name)
        if ts is not None and ts.shape is not None and len(ts.shape) <= 1:
            return None
        return "default perm reverses the axes"
    return None if list(perm) == list(range(len(perm))) else f"perm {list(perm)}"


def _reshape(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    s = _static(facts, node.inputs[0])
    t = const_value(_input(node, 1))
    if s is None or t is None:
        return "input shape or target shape unknown"
    allowzero = int(node.attrs.get("allowzero", 0))
    target = [int(v) for v in t.reshape(-1)]
    if len(target) != len(s):
        return f"target {target} has another rank than {list(s)}"
    out = []
    for i, d in enumerate(target):
        out.append(s[i] if d == 0 and not allowzero else d)
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(s, dtype=np.int64))
        if known == 0:
            return "cannot infer -1 with a zero dim"
        out[out.index(-1)] = total // known
    return None if tuple(out) == s else f"reshapes {list(s)} to {target}"


def _expand(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    s = _static(facts, node.inputs[0])
    t = const_value(_input(node, 1))
    if s is None or t is None:
        return "input shape or target shape unknown"
    try:
        b = np.broadcast_shapes(s, tuple(int(v) for v in t.reshape(-1)))
    except ValueError:
        return "shapes do not broadcast"
    return None if tuple(b) == s else f"expands {list(s)} to {list(b)}"


def _tile(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    r = const_value(_input(node, 1))
    if r is None or opset_version(graph) < 6:
        return "repeats unknown"
    return None if bool(np.all(r == 1)) else "repeats are not all 1"


def _slice(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    s = _static(facts, node.inputs[0])
    if s is None:
        return "input shape unknown"
    if opset_version(graph) < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
        if starts is None or ends is None:
            return "starts/ends missing"
    else:
        vals = [const_value(_input(node, i)) for i in range(1, 5)]
        if vals[0] is None or vals[1] is None:
            return "starts/ends not constant"
        if (_input(node, 3) is not None and vals[2] is None) or (
            _input(node, 4) is not None and vals[3] is None
        ):
            return "axes/steps not constant"
        starts, ends, axes, steps = (None if v is None else v.reshape(-1).tolist() for v in vals)
    r = len(s)
    axes = (
        list(range(len(starts)))
        if axes is None
        else [int(a) + r if a < 0 else int(a) for a in axes]
    )
    steps = [1] * len(starts) if steps is None else steps
    if any(int(st) != 1 for st in steps):
        return "a step is not 1"
    for a, b, e in zip(axes, starts, ends, strict=False):
        if a < 0 or a >= r:
            return "axis out of range"
        start, stop, _ = slice(int(b), int(e)).indices(s[a])
        if start != 0 or stop != s[a]:
            return f"slices axis {a}"
    return None


def _pad(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    if opset_version(graph) < 11:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
    else:
        pads = const_value(_input(node, 1))
    if pads is None:
        return "pads unknown"
    return None if bool(np.all(np.asarray(pads) == 0)) else "pads are not zero"


def _single(node: gs.Node, facts: Facts, graph: gs.Graph) -> str | None:
    return None if len(node.inputs) == 1 else "several inputs"


RULES: dict[str, Callable[[gs.Node, Facts, gs.Graph], str | None]] = {
    "Cast": _cast,
    "CastLike": _cast_like,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Expand": _expand,
    "Tile": _tile,
    "Slice": _slice,
    "Pad": _pad,
    "Concat": _single,
    "Sum": _single,
    "Max": _single,
    "Min": _single,
    "Mean": _single,
}


class RemoveNoops(Pass):
    """No-op Cast/Transpose/Reshape/Expand/Tile/Slice/Pad and single-input variadic removal."""

    name = "remove-noops"
    exact = True
    summary = "remove no-op Cast/Transpose/Reshape/Expand/Slice/Pad and single-input Concat/Sum"
    tags = ("cleanup",)
    subgraphs = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        node_names_unique(graph)
        candidates = [
            n
            for n in graph.nodes
            if n.op in RULES
            and n.domain in STANDARD_DOMAINS
            and n.inputs
            and n.outputs
            and not is_empty_tensor(n.inputs[0])
        ]
        if not candidates:
            return PassResult.unchanged()
        facts, note = infer_facts(graph)
        notes = [note] if note else []
        sites: list[str] = []
        for node in candidates:
            try:
                why = RULES[node.op](node, facts, graph)
            except Exception as e:
                why = f"not understood ({type(e).__name__})"
            if why is not None:
                continue  # not a no-op: the common case, not worth a note
            out = node.outputs[0]
            ts_in, ts_out = facts.get(node.inputs[0].name), facts.get(out.name)
            if (
                ts_in is not None
                and ts_out is not None
                and ts_in.dtype is not None
                and ts_out.dtype is not None
                and ts_in.dtype != ts_out.dtype
            ):
                notes.append(f"{node.name}: kept, dtype {ts_in.dtype} -> {ts_out.dtype}")
                continue
            if not ctx.allow(node.name):
                continue
            why = merge_tensors(graph, out, node.inputs[0])
            if why:
                notes.append(f"{node.name}: kept, {why}")
                continue
            detach(node)
            sites.append(node.name)
        return PassResult(changed=bool(sites), rewrites=len(sites), notes=notes, sites=sites)
