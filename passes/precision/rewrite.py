"""Apply a :class:`.plan.Plan`: retype tensors, convert constants, insert Casts.

Every float32 tensor gets a *home* type: the half type when its producer converts it (or, for a
constant, when every reader wants it in half precision; with ``compute="weights"``, when it is a
large enough weight), float32 otherwise. A reader that wants the other type reads a Cast of it,
made once per tensor and type and placed right after the tensor's producer (in the graph that
defines it, so subgraphs see it too). Graph outputs keep their type (``keep_io_types``, and
always for If/Loop/Scan bodies): a half output is computed under a new name and Cast back to its
own. Casts are therefore never stacked by construction; :mod:`.casts` removes those that cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxopt.weights import array as tensor_array

from .plan import Plan
from .schema import FLOAT, HalfType, graphs, subgraphs


@dataclass
class Counts:
    casts: int = 0
    constants: int = 0
    half_io: int = 0


class Rewriter:
    """Rewrites ``model`` in place following ``plan``."""

    def __init__(self, model, plan: Plan, half: HalfType, types: dict[str, int], config) -> None:
        self.model, self.plan, self.half, self.types, self.c = model, plan, half, types, config
        self.h = half.elem
        self.home: dict[str, int] = {}
        self.avail: dict[tuple[str, int], str] = {}
        #: every graph, outer first (held, so that the proto wrappers stay the same objects)
        self.graphs = list(graphs(model.graph))
        #: tensor -> (index of its graph, name of its producer or "" for inputs/initializers)
        self.where: dict[str, tuple[int, str]] = {}
        self.inserts: dict[int, list[tuple[str, onnx.NodeProto]]] = {}
        self.nodes: dict[str, onnx.NodeProto] = {}
        self.taken: set[str] = set()
        self.counts = Counts()
        self.const_nodes: dict[str, onnx.NodeProto] = {}

    def run(self) -> Counts:
        self._index()
        self._homes()
        self._outputs()
        self._inputs()
        self._attributes()
        self._retype()
        self._place()  # last: rebuilding a node list copies its nodes (and their subgraphs)
        return self.counts

    # -------------------------------------------------------------------------------------
    def _index(self) -> None:
        for gi, g in enumerate(self.graphs):
            for v in [*g.input, *g.initializer]:
                self.where.setdefault(v.name, (gi, ""))
                self.taken.add(v.name)
            for n in g.node:
                self.taken.add(n.name)
                self.nodes[n.name] = n
                for o in n.output:
                    self.where[o] = (gi, n.name)
                    self.taken.add(o)
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                    self.const_nodes[n.output[0]] = n

    def _wants(self) -> dict[str, list[int]]:
        """For every float tensor, the type each reader slot wants."""
        wants: dict[str, list[int]] = {}
        for g in self.graphs:
            for n in g.node:
                slots = self.plan.half.get(n.name)
                for i, x in enumerate(n.input):
                    if x and self.types.get(x) == FLOAT:
                        half = slots is not None and slots[0][i]
                        wants.setdefault(x, []).append(self.h if half else FLOAT)
        return wants

    def _homes(self) -> None:
        wants = self._wants()
        main = self.model.graph
        outputs = {o.name for g in self.graphs for o in g.output}
        for g in self.graphs:
            inits = {t.name for t in g.initializer}
            for v in g.input:
                if v.name not in inits and self.types.get(v.name) == FLOAT:
                    io = g is main and not self.c.keep_io_types and self.c.compute == "all"
                    self.home[v.name] = self.h if io else FLOAT
            for n in g.node:
                slots = self.plan.half.get(n.name)
                for i, o in enumerate(n.output):
                    if self.types.get(o) == FLOAT and o not in self.const_nodes:
                        self.home[o] = self.h if slots is not None and slots[1][i] else FLOAT
        for name in self._constant_names():
            self.home[name] = self._constant_home(name, wants.get(name, []), name in outputs)

    def _constant_names(self) -> list[str]:
        names = [t.name for g in self.graphs for t in g.initializer]
        return [n for n in names + list(self.const_nodes) if self.types.get(n) == FLOAT]

    def _constant_home(self, name: str, wants: list[int], is_output: bool) -> int:
        if name in self.plan.bad_constants or is_output or not wants:
            return FLOAT
        if self.c.compute == "weights":
            return self.h if name in self.plan.weights else FLOAT
        return self.h if all(w == self.h for w in wants) else FLOAT

    # -------------------------------------------------------------------------------------
    def _outputs(self) -> None:
        main = self.model.graph
        for gi, g in enumerate(self.graphs):
            for out in g.output:
                t = out.name
                home = self.home.get(t)
                if home is None:
                    continue
                keep = g is not main or self.c.keep_io_types or self.c.compute == "weights"
                if not keep:
                    if home == self.h:
                        self.counts.half_io += 1
                    continue
                if home == FLOAT:
                    continue
                gdef, producer = self.where[t]
                if gdef == gi and producer:
                    new = self._name(f"{t}_{self.half.name}")
                    node = self.nodes[producer]
                    node.output[list(node.output).index(t)] = new
                    self.where[new] = (gi, producer)
                    self.avail[(t, self.h)] = new
                    self._cast(gi, producer, new, t, FLOAT)
                    self.avail[(t, FLOAT)] = t
                else:  # defined outside this body: Cast inside it, under a new output name
                    out.name = self._get(t, FLOAT, gi)

    def _inputs(self) -> None:
        for gi, g in enumerate(self.graphs):
            for n in g.node:
                slots = self.plan.half.get(n.name)
                for i, x in enumerate(n.input):
                    if not x or x not in self.home:
                        continue
                    want = self.h if slots is not None and slots[0][i] else FLOAT
                    n.input[i] = self._get(x, want, gi)

    def _get(self, t: str, want: int, reader: int) -> str:
        """The name holding tensor ``t`` as ``want`` (a Cast made once, after its producer)."""
        if (t, want) in self.avail:
            return self.avail[(t, want)]
        if self.home[t] == want:
            return t
        src = self.avail.get((t, self.home[t]), t)
        g, producer = self.where.get(src, self.where.get(t, (reader, "")))
        suffix = self.half.name if want == self.h else "float32"
        new = self._name(f"{t}_{suffix}")
        self._cast(g, producer, src, new, want)
        self.avail[(t, want)] = new
        return new

    def _cast(self, g: int, after: str, src: str, dst: str, to: int) -> None:
        """A Cast ``src -> dst`` in graph ``g``, right after node ``after`` ("" : first)."""
        node = onnx.helper.make_node("Cast", [src], [dst], name=self._name(f"{dst}_Cast"), to=to)
        self.inserts.setdefault(g, []).append((after, node))
        self.where[dst] = (g, node.name)
        self.counts.casts += 1

    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def _place(self) -> None:
        """Insert the Casts, innermost graphs first (a graph's rebuilt node list holds copies
        of its nodes, so its subgraphs must be final by then)."""
        for gi in reversed(range(len(self.graphs))):
            g = self.graphs[gi]
            extra = self.inserts.get(gi)
            if not extra:
                continue
            after: dict[str, list[onnx.NodeProto]] = {}
            for a, c in extra:
                after.setdefault(a, []).append(c)
            nodes = list(after.get("", []))
            for n in g.node:
                nodes.append(n)
                nodes.extend(after.get(n.name, []))
            del g.node[:]
            g.node.extend(nodes)

    # -------------------------------------------------------------------------------------
    def _attributes(self) -> None:
        """Half nodes whose output type is an attribute; half constants' values."""
        for g in self.graphs:
            for t in g.initializer:
                if self.home.get(t.name) == self.h:
                    t.CopyFrom(self.half.tensor(tensor_array(t), t.name))
                    self.counts.constants += 1
            for n in g.node:
                if (
                    n.output
                    and n.output[0] in self.const_nodes
                    and self.home.get(n.output[0]) == self.h
                ):
                    self._constant_node(n)
                elif n.name in self.plan.half:
                    self._typed_by_attribute(n)

    def _constant_node(self, n: onnx.NodeProto) -> None:
        a = n.attribute[0]
        value = tensor_array(a.t) if a.type == onnx.AttributeProto.TENSOR else None
        if value is None:
            value = onnx.helper.get_attribute_value(a)
        del n.attribute[:]
        n.attribute.append(onnx.helper.make_attribute("value", self.half.tensor(value, "")))
        self.counts.constants += 1

    def _typed_by_attribute(self, n: onnx.NodeProto) -> None:
        outs = self.plan.half[n.name][1]
        if not outs or not outs[0]:
            return
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                a.i = self.h
            elif n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == FLOAT:
                a.t.CopyFrom(self.half.tensor(tensor_array(a.t), a.t.name))
            elif n.op_type == "EyeLike" and a.name == "dtype" and a.i == FLOAT:
                a.i = self.h
        if n.op_type == "EyeLike" and not any(a.name == "dtype" for a in n.attribute):
            n.attribute.append(onnx.helper.make_attribute("dtype", self.h))

    def _retype(self) -> None:
        """Value infos, inputs and outputs of tensors whose home is now the half type."""
        renamed = {t for (t, want) in self.avail if want == FLOAT and self.avail[(t, want)] == t}
        for g in self.graphs:
            for v in [*g.input, *g.value_info, *g.output]:
                if self.home.get(v.name) == self.h and v.name not in renamed:
                    if v.type.HasField("tensor_type"):
                        v.type.tensor_type.elem_type = self.h


__all__ = ["Counts", "Rewriter", "subgraphs"]
