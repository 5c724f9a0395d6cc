"""Helpers the cleanup passes share: type/shape facts, tensor merging, constant materialisation.

Shape facts come from ``onnx.shape_inference`` (with data propagation) run on an exported *copy*
of the graph; the facts are kept in a side table keyed by tensor name, so nothing inferred is
written into the model the pass returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import first_line
from onnxopt.graph import is_graph_input, is_graph_output
from onnxopt.graph_shapes import infer_light

logger = logging.getLogger(__name__)

#: ops whose outputs differ between runs: never folded, never merged
NONDETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)

#: the default ONNX domain as onnx-graphsurgeon reports it: ``None`` when the proto leaves the
#: field unset (both torch exporters do), ``""`` or ``"ai.onnx"`` when it is written out
STANDARD_DOMAINS = ("", "ai.onnx", None)


@dataclass(frozen=True)
class TypeShape:
    """What is known about one tensor: element dtype (numpy) and shape (ints or None per dim)."""

    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dimension is a known non-negative int, else None."""
        if self.shape is None or any(not isinstance(d, int) or d < 0 for d in self.shape):
            return None
        return tuple(int(d) for d in self.shape)  # type: ignore[arg-type]


def _np_dtype(elem_type: int) -> np.dtype | None:
    if not elem_type:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def _from_value_info(vi: onnx.ValueInfoProto) -> TypeShape | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    shape: tuple[int | None, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return TypeShape(_np_dtype(tt.elem_type), shape)


def infer_facts(graph: gs.Graph) -> tuple[dict[str, TypeShape], str | None]:
    """Types and shapes of every tensor of ``graph`` (main graph only).

    Returns:
        (facts by tensor name, a note when shape inference failed and only the graph's own
        annotations are available).
    """
    facts: dict[str, TypeShape] = {}
    note = None
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant):
            try:
                facts[name] = TypeShape(np.dtype(t.dtype), tuple(int(d) for d in t.shape))
            except TypeError:
                facts[name] = TypeShape(None, tuple(int(d) for d in t.shape))
        elif t.dtype is not None or t.shape is not None:
            shape = None
            if t.shape is not None:
                shape = tuple(d if isinstance(d, int) else None for d in t.shape)
            dtype = None
            try:
                dtype = np.dtype(t.dtype) if t.dtype is not None else None
            except TypeError:
                dtype = None
            facts[name] = TypeShape(dtype, shape)
    try:
        # a copy without large weights (other passes of a batch may have left detached nodes)
        inferred = infer_light(graph)
    except Exception as e:
        msg = first_line(e, 160)
        return facts, f"shape inference failed ({msg}); used the graph's own annotations"
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        ts = _from_value_info(vi)
        if ts is None:
            continue
        old = facts.get(vi.name)
        if old is None:
            facts[vi.name] = ts
        else:  # keep whatever the graph itself states, fill the rest from inference
            facts[vi.name] = TypeShape(
                old.dtype if old.dtype is not None else ts.dtype,
                old.shape if old.static_shape is not None or ts.shape is None else ts.shape,
            )
    return facts, note


def detach(node: gs.Node) -> None:
    """Disconnect ``node`` so the next cleanup drops it."""
    node.inputs.clear()
    node.outputs.clear()


def materialize(graph: gs.Graph, tensor: gs.Variable, value: np.ndarray) -> None:
    """Make ``tensor`` a constant with ``value``, keeping its name and every reference.

    An intermediate tensor becomes an initializer in place (so subgraph references still
    resolve); a graph output becomes the output of a ``Constant`` node (an output that is an
    initializer is not portable across runtimes).
    """
    node = tensor.inputs[0] if len(tensor.inputs) else None
    if node is not None:
        idx = next(i for i, t in enumerate(node.outputs) if t is tensor)
        node.outputs[idx] = gs.Variable(tensor.name + "__unused_" + str(id(tensor)))
    value = np.asarray(value)
    if is_graph_output(graph, tensor):
        const = gs.Constant(tensor.name + "__value", np.array(value, order="C", copy=True))
        graph.nodes.append(
            gs.Node(
                "Constant", name=tensor.name + "__const", attrs={"value": const}, outputs=[tensor]
            )
        )
        tensor.dtype = value.dtype
        tensor.shape = list(value.shape)
    else:
        tensor.to_constant(np.array(value, order="C", copy=True))


def is_constant(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """An initializer (not overridable) or the output of a ``Constant`` node."""
    if isinstance(tensor, gs.Constant):
        return not is_graph_input(graph, tensor)
    p = tensor.inputs[0] if len(tensor.inputs) else None
    return p is not None and p.op == "Constant" and p.domain in STANDARD_DOMAINS


def short(e: BaseException) -> str:
    """First line of an exception message, capped, for notes."""
    return first_line(e, 200)
