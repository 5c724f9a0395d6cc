"""Running a model that does not fit in memory, block by block.

The main graph's nodes (in their topological order) are cut into consecutive blocks of at
most ``max_bytes`` of weights each (a node heavier than that is a block alone). Each block
becomes a model of its own: its inputs are the tensors it reads that earlier blocks (or the
feeds) produced, its outputs the tensors it produces that later blocks or the graph's outputs
read, and a node with a body counts the outer names the body reads among its inputs. The
blocks run one after the other, one session alive at a time, each on every run before the
next is built; only the tensors still needed are kept between them.

The outputs are those of the whole model (the same kernels run on the same values), so a
candidate run this way is verified exactly as one run in a single session: end to end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

from onnxopt import sessions, weights

logger = logging.getLogger(__name__)


def _reads(node: onnx.NodeProto) -> list[str]:
    """Names ``node`` reads, including the outer names its bodies read."""
    out = [i for i in node.input if i]
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            out.extend(_outer_reads(g))
    return out


def _outer_reads(g: onnx.GraphProto) -> list[str]:
    defined = {v.name for v in g.input} | {t.name for t in g.initializer}
    out: list[str] = []
    for n in g.node:
        out.extend(i for i in _reads(n) if i not in defined)
        defined.update(n.output)
    return out


@dataclass
class Block:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)
    weight_bytes: int = 0


def plan(model: onnx.ModelProto, max_bytes: int) -> list[Block]:
    """Cut ``model``'s main graph into blocks of at most ``max_bytes`` of weights."""
    g = model.graph
    size = {t.name: weights.nbytes(t) for t in g.initializer}
    blocks: list[Block] = []
    cur = Block()
    used: set[str] = set()
    for node in g.node:
        reads = _reads(node)
        new = sum(size[r] for r in set(reads) if r in size and r not in used)
        if cur.nodes and cur.weight_bytes + new > max_bytes:
            blocks.append(cur)
            cur, used = Block(), set()
            new = sum(size[r] for r in set(reads) if r in size)
        cur.nodes.append(node)
        cur.weight_bytes += new
        used.update(r for r in reads if r in size)
    if cur.nodes:
        blocks.append(cur)
    _wire(blocks, g, size)
    return blocks


def _wire(blocks: list[Block], g: onnx.GraphProto, size: dict[str, int]) -> None:
    """Set each block's inputs, outputs and initializers."""
    graph_outputs = {o.name for o in g.output}
    later: set[str] = set(graph_outputs)
    for b in reversed(blocks):
        produced = {o for n in b.nodes for o in n.output if o}
        reads = list(dict.fromkeys(r for n in b.nodes for r in _reads(n)))
        b.outputs = [o for n in b.nodes for o in n.output if o and o in later]
        b.initializers = [r for r in reads if r in size]
        b.inputs = [r for r in reads if r not in produced and r not in size]
        later |= set(b.inputs)


def block_model(model: onnx.ModelProto, b: Block, types: dict[str, int]) -> onnx.ModelProto:
    """The block as a model; ``types`` gives each input's element type."""
    inits = {t.name: t for t in model.graph.initializer}
    g = onnx.helper.make_graph(
        list(b.nodes),
        model.graph.name or "block",
        [onnx.helper.make_tensor_value_info(n, types[n], None) for n in b.inputs],
        [onnx.helper.make_empty_tensor_value_info(n) for n in b.outputs],
        initializer=[inits[n] for n in b.initializers],
    )
    out = onnx.helper.make_model(g, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out


class Chained:
    """A model run block by block; quacks like a session for :class:`onnxopt.runner.Runner`
    (``get_outputs``, and ``run_all`` over every run of a Feeds)."""

    def __init__(self, model: onnx.ModelProto, max_bytes: int, options: Any) -> None:
        self.model = model
        self.options = options
        self.blocks = plan(model, max_bytes)
        self.output_names = [o.name for o in model.graph.output]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=n) for n in self.output_names]

    def run_all(self, runs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        from onnxopt.memory import check_session

        values = [dict(r) for r in runs]
        needed_later = [set(b.inputs) for b in self.blocks]
        for k, b in enumerate(self.blocks):
            types = {n: onnx.helper.np_dtype_to_tensor_dtype(values[0][n].dtype) for n in b.inputs}
            sub = block_model(self.model, b, types)
            check_session(sub)
            sess = sessions.build(sub, self.options)
            for v in values:
                outs = sess.run(b.outputs, {n: v[n] for n in b.inputs})
                v.update(zip(b.outputs, outs))
            del sess
            keep = set(self.output_names).union(*needed_later[k + 1 :])
            for v in values:
                for name in [n for n in v if n not in keep]:
                    del v[name]
            logger.debug("block %d/%d done (%d nodes)", k + 1, len(self.blocks), len(b.nodes))
        return [{n: v[n] for n in self.output_names} for v in values]
