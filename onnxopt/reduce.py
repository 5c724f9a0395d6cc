"""Cut a failing rewrite down to the smallest subgraph that still fails (delta debugging).

Given the original ``a``, the rewritten ``b`` and the first tensor where ``b`` goes wrong
(:func:`onnxopt.layerwise.compare_layers`), the candidates are the nodes of ``b`` between that
tensor and the last good tensors before it: walk up from the bad tensor and stop at tensors
that ``a`` also computes (by name or through provenance) and that still match. A subset ``S``
of those nodes *fails* when the subgraph made of ``S`` alone, fed with ``a``'s values of the
tensors it reads, computes a tensor that differs from ``a``'s value of it by more than the
threshold (the scaled max abs error of :mod:`onnxopt.layerwise`). A subset that reads a tensor
only ``b`` computes cannot be fed and does not fail.

``ddmin`` (Zeller and Hildebrandt, 2002) then shrinks the candidates: try each of ``n`` chunks,
then each complement; on a failure continue from it, else double ``n``; stop when no single
node can be removed. The result is 1-minimal: removing any one node makes it pass.

The subgraph is written as a model of its own (inputs: the tensors it reads; outputs: the
tensors that differ), with an ``.npz`` of its inputs and ``a``'s expected outputs beside it, and
the original nodes it came from (provenance) as ``<name>.orig.onnx`` when they form a model
that reads the same inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt import provenance
from onnxopt.chunking import Side
from onnxopt.data import Feeds
from onnxopt.errors import ModelError, first_line
from onnxopt.layerwise import LayerReport, match_tensors
from onnxopt.mapped import MappedModel

logger = logging.getLogger(__name__)

#: at most this many subsets are tried
MAX_TESTS = 2000


@dataclass
class Reduction:
    """The outcome of :func:`reduce_failure`.

    Attributes:
        nodes: names of the nodes of ``b`` in the failing subgraph (empty: no reduction).
        model: that subgraph as a model (None when nothing failed).
        original: the nodes of ``a`` it came from, as a model (None when they do not form one).
        inputs, expected: the subgraph's inputs and ``a``'s values of its outputs.
        candidates: how many nodes the search started from.
        tests: how many subsets were run.
        why: the failing tensors and their errors, or why nothing was reduced.
    """

    nodes: list[str] = field(default_factory=list)
    model: onnx.ModelProto | None = None
    original: onnx.ModelProto | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: int = 0
    tests: int = 0
    why: str = ""

    def save(self, path: str | Path) -> list[Path]:
        """Write the subgraph (``path``), its data (``.npz``) and the original nodes
        (``.orig.onnx``) atomically. Returns the files written."""
        from onnxopt.model import save_model

        if self.model is None:
            raise ModelError("nothing to write: the rewrite was not reduced")
        path = Path(path)
        out = [save_model(self.model, path)]
        npz = path.with_suffix(".npz")
        arrays = {**self.inputs, **{f"expected/{k}": v for k, v in self.expected.items()}}
        tmp = npz.with_name(f".{npz.name}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(npz)
        out.append(npz)
        if self.original is not None:
            out.append(save_model(self.original, path.with_suffix(".orig.onnx")))
        return out


def ddmin(items: Sequence[Any], fails: Callable[[list[Any]], bool], max_tests: int) -> list[Any]:
    """A 1-minimal failing subset of ``items`` (``fails(items)`` must hold)."""
    items, n, tests = list(items), 2, 0
    while len(items) >= 2 and tests < max_tests:
        size = -(-len(items) // n)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        found = None
        for part in parts:
            tests += 1
            if fails(part):
                found, n = part, 2
                break
        if found is None and len(parts) > 2:
            for part in parts:
                rest = [x for x in items if x not in part]
                tests += 1
                if fails(rest):
                    found, n = rest, max(n - 1, 2)
                    break
        if found is not None:
            items = found
        elif n >= len(items):
            break
        else:
            n = min(len(items), 2 * n)
    return items


class _Subgraphs:
    """Builds and runs subgraphs of ``b`` fed with ``a``'s values."""

    def __init__(self, b: MappedModel, refs: list[dict[str, np.ndarray]], to_a: dict[str, str]):
        self.b = b
        self.nodes = list(b.proto.graph.node)
        self.consts = _constants(b)
        self.refs = refs  # per run: a's value of every tensor the search may need, by a's name
        self.to_a = to_a  # b tensor -> a tensor
        self.threshold = 0.0
        self.tests = 0
        self._cache: dict[frozenset[str], tuple[bool, str]] = {}

    def model(self, picked: Sequence[int]) -> tuple[onnx.ModelProto, list[str], list[str]] | None:
        """(subgraph of the nodes at indices ``picked``, its inputs, its compared outputs);
        None when it reads a tensor that neither a constant nor ``a`` provides, or computes
        nothing ``a`` also computes."""
        nodes = [self.nodes[i] for i in sorted(picked)]
        made = {t for n in nodes for t in n.output if t}
        reads = [t for n in nodes for t in n.input if t and t not in made]
        inputs, inits = [], {}
        for t in dict.fromkeys(reads):
            if t in self.consts:
                inits[t] = self.consts[t]
            elif self.to_a.get(t) in self.refs[0]:
                inputs.append(t)
            else:
                return None
        outputs = [t for n in nodes for t in n.output if self.to_a.get(t) in self.refs[0]]
        if not outputs:
            return None
        g = onnx.helper.make_graph(
            [_plain(n) for n in nodes],
            "reduced",
            [_info(t, self.refs[0][self.to_a[t]]) for t in inputs],
            [_info(t, self.refs[0][self.to_a[t]]) for t in outputs],
            [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
        )
        m = onnx.helper.make_model(g, opset_imports=list(self.b.proto.opset_import))
        m.ir_version = self.b.proto.ir_version
        return m, inputs, outputs

    def fails(self, picked: Sequence[int]) -> tuple[bool, str]:
        """Whether the subgraph of ``picked`` differs from ``a`` (and how)."""
        key = frozenset(picked)
        if key not in self._cache:
            self._cache[key] = self._fails(picked)
        return self._cache[key]

    def _fails(self, picked: Sequence[int]) -> tuple[bool, str]:
        built = self.model(picked)
        if built is None:
            return False, "not runnable alone"
        m, inputs, outputs = built
        self.tests += 1
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 4
            sess = ort.InferenceSession(m.SerializeToString(), so, ["CPUExecutionProvider"])
            worst = ""
            for ref in self.refs:
                got = sess.run(outputs, {t: ref[self.to_a[t]] for t in inputs})
                for t, v in zip(outputs, got):
                    err = _error(ref[self.to_a[t]], np.asarray(v))
                    if err > self.threshold:
                        worst = worst or f"'{t}' differs from the original by {err:.3g}"
            return bool(worst), worst
        except Exception as e:  # noqa: BLE001 - a subgraph that does not run does not fail
            return False, first_line(e)


def reduce_failure(
    a: MappedModel,
    b: MappedModel,
    feeds: Feeds,
    layers: LayerReport,
    *,
    runs: int = 2,
    max_tests: int = MAX_TESTS,
) -> Reduction:
    """The smallest subgraph of ``b`` that still differs from ``a`` (module docstring).

    Args:
        a, b: the original and the rewritten model.
        feeds: the inputs (the first ``runs`` are used).
        layers: their comparison; its first tensor over the threshold is the one to explain.
    """
    if layers.first_over is None:
        return Reduction(why="no tensor differs beyond the threshold: nothing to reduce")
    pairs = match_tensors(a.proto, b.proto)
    bad = layers.rows[layers.first_over]
    good = {
        r["other"] for r in layers.rows if r["error"] is not None and r["error"] <= layers.threshold
    }
    cands = _cone(b.proto, bad["other"], good)
    to_a = {p.b: p.a for p in pairs}
    to_a.update({v.name: v.name for v in b.proto.graph.input if v.name in feeds.runs[0]})
    need = _needed(b.proto, cands, to_a)
    refs = _reference(a, feeds.runs[:runs], sorted(need))
    sub = _Subgraphs(b, refs, to_a)
    sub.threshold = layers.threshold
    out = Reduction(candidates=len(cands))
    ok, why = sub.fails(cands)
    if not ok:
        out.why = f"the {len(cands)} nodes before '{bad['other']}' do not fail alone ({why})"
        return out
    picked = sorted(ddmin(cands, lambda s: sub.fails(s)[0], max_tests))
    nodes = [b.proto.graph.node[i] for i in picked]
    out.nodes = [n.name or f"#{i} {n.op_type}" for i, n in zip(picked, nodes)]
    out.tests = sub.tests
    out.model, inputs, outputs = sub.model(picked)
    out.why = sub.fails(picked)[1]
    out.inputs = {t: refs[0][to_a[t]] for t in inputs}
    out.expected = {t: refs[0][to_a[t]] for t in outputs}
    out.original = _original(a, nodes, refs[0])
    return out


def _cone(b: onnx.ModelProto, tensor: str, good: set[str]) -> list[int]:
    """Indices of the nodes of ``b`` that ``tensor`` depends on, back to good tensors."""
    nodes = b.graph.node
    prod = {t: i for i, n in enumerate(nodes) for t in n.output if t}
    seen: set[int] = set()
    stack, visited = [tensor], set()
    while stack:
        t = stack.pop()
        if t in visited:
            continue
        visited.add(t)
        i = prod.get(t)
        if i is None or nodes[i].op_type == "Constant" or (t in good and t != tensor):
            continue
        seen.add(i)
        stack.extend(x for x in nodes[i].input if x)
    return sorted(seen)


def _needed(b: onnx.ModelProto, picked: list[int], to_a: dict[str, str]) -> set[str]:
    """The tensors of ``a`` a subset of ``picked`` may read or be compared with."""
    out = set()
    for i in picked:
        n = b.graph.node[i]
        out.update(to_a[t] for t in (*n.input, *n.output) if t in to_a)
    return out


def _reference(
    a: MappedModel, runs: list[dict[str, np.ndarray]], tensors: list[str]
) -> list[dict[str, np.ndarray]]:
    """``a``'s values of ``tensors`` (graph inputs included) on each run."""
    side = Side(a, threads=0)
    inputs = [t for t in tensors if t in runs[0]]
    computed = [t for t in tensors if t not in runs[0]]
    sess = side.session(computed) if computed else None
    out = []
    for run in runs:
        values = side.run(sess, run) if sess is not None else {}
        values.update({t: run[t] for t in inputs})
        out.append(values)
    return out


def _original(
    a: MappedModel, nodes: list[onnx.NodeProto], ref: dict[str, np.ndarray]
) -> onnx.ModelProto | None:
    """The nodes of ``a`` that ``nodes`` came from, as a model reading tensors of ``ref``."""
    wanted = {o for n in nodes for o in provenance.origins(n)}
    picked = [i for i, n in enumerate(a.proto.graph.node) if n.name in wanted]
    built = _Subgraphs(a, [ref], {t: t for t in ref}).model(picked) if picked else None
    return built[0] if built is not None else None


def _constants(m: MappedModel) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in m.proto.graph.initializer:
        if t.name in m.weights:
            out[t.name] = m.weights[t.name]
        else:
            out[t.name] = numpy_helper.to_array(t)
    for n in m.proto.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            for attr in n.attribute:
                if attr.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _plain(n: onnx.NodeProto) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(n)
    return c


def _info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    arr = np.asarray(value)
    elem = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    return onnx.helper.make_tensor_value_info(name, elem, list(arr.shape))


def _error(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        return float("inf")
    if ref.dtype.kind != "f":
        return float(np.count_nonzero(ref != got)) / max(ref.size, 1)
    if not ref.size:
        return 0.0
    x = ref.astype(np.float64)
    return float(np.max(np.abs(x - got.astype(np.float64))) / max(1.0, np.max(np.abs(x))))
