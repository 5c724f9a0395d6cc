"""Lift ``Constant`` nodes into initializers.

``y = Constant(value=v)`` becomes the initializer ``y = v``: same name, same value, one node
fewer, and every later pass sees ``y`` as a plain ``gs.Constant``. The attribute forms
``value``, ``value_float(s)`` and ``value_int(s)`` are lifted; ``value_string(s)`` and
``sparse_value`` stay nodes. A ``Constant`` whose output is a graph output stays a node too: an
initializer that is also a graph output is not portable across runtimes (the same rule as
``materialize``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import PassContext
from onnxopt.graph import is_graph_output
from onnxopt.passes.cleanup._util import STANDARD_DOMAINS

logger = logging.getLogger(__name__)


def constant_node_value(node: gs.Node) -> tuple[np.ndarray | None, str | None]:
    """(value, why not) of a ``Constant`` node's attribute."""
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        c = attrs["value"]
        values = np.asarray(c.values)
        if values.dtype == object:
            return None, "string tensor"
        return values, None
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32), None
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"]), dtype=np.float32), None
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64), None
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"]), dtype=np.int64), None
    kinds = ", ".join(sorted(attrs)) or "no attribute"
    return None, f"attribute {kinds}"


def lift_constants(graph: gs.Graph, ctx: PassContext) -> tuple[list[str], list[str]]:
    """Turn every liftable ``Constant`` node of the main graph into an initializer.

    Returns:
        (names of the lifted tensors (the site keys), notes on the Constant nodes left in place).
    """
    done: list[str] = []
    notes: list[str] = []
    for node in list(graph.nodes):
        if node.op != "Constant" or node.domain not in STANDARD_DOMAINS:
            continue
        if len(node.outputs) != 1 or not node.outputs[0].name:
            continue
        out = node.outputs[0]
        if is_graph_output(graph, out):
            notes.append(f"{node.name}: Constant kept, '{out.name}' is a graph output")
            continue
        value, why = constant_node_value(node)
        if value is None:
            notes.append(f"{node.name}: Constant kept, {why}")
            continue
        if not ctx.allow(out.name):
            continue
        node.outputs.clear()
        node.inputs.clear()
        out.to_constant(np.array(value, order="C", copy=True))
        done.append(out.name)
    if done:
        graph.cleanup(remove_unused_graph_inputs=False)
    return done, notes
