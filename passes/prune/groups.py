"""Channel dependency analysis: which channels of which layers must be pruned together.

One walk over the graph in topological order gives every tensor a :class:`Layout` (which groups
its channel axis is made of) or none. Rules, by op:

- producers (Conv with ``group = 1``, ConvTranspose with ``group = 1``, Gemm, MatMul with a
  constant 2-D weight) start a new group on their output channel axis; the same node is a
  *consumer* of its input's groups (weight input-channel axis);
- grouped Conv with ``C_in = C_out`` (depthwise, ``group = C``, or ResNeXt-style, ``C / group``
  channels per conv-group) couples input and output channels: pass-through with its weight
  (axis 0), bias and ``group`` attribute as members; the group's block becomes ``C / group`` so
  only whole conv-groups go (a different block already set, e.g. heads, closes). Grouped convs
  with ``C_in != C_out`` (channel multipliers) and grouped ConvTranspose close their groups;
- GroupNormalization is pass-through in whole norm groups (block ``C / num_groups``; a layout
  not made of whole norm groups closes), its scale/bias (per norm group at opset 18, per channel
  from opset 21) and ``num_groups`` are members;
- pass-through ops (activations, pooling, BatchNormalization, InstanceNormalization, Resize,
  Dropout, Identity, Transpose, Squeeze/Unsqueeze, reductions and Softmax on other axes, Slice
  and Gather on other axes) keep the layout, moving its axis where the op moves axes; a norm's
  parameters are members, one entry per channel or, on an axis of units, per unit;
- element-wise Add/Sub/Mul/Div/Max/Min/Pow couple their inputs: two layouts are unioned pair by
  pair (a residual Add); a constant with the channel extent becomes a member (a bias); an input
  from outside any group closes the group unless it broadcasts along the channel axis;
- Concat on the channel axis concatenates layouts (channel offsets); Split on it divides them
  at group boundaries (its constant sizes become members), and so does a Slice on it with
  constant non-negative starts/ends and step 1 (its starts/ends entries become members; a
  Slice that cuts inside a group closes it);
- Flatten / Reshape ``[N, C, H, W] -> [N, C·H·W]`` multiplies ``expand`` by ``H·W``;
  Reshape ``[.., C, S..] -> [.., C/per, per·S..]`` splits the channel axis into whole units
  (block ``per``, the axis then counts units) and the reverse Reshape merges them back into
  channels: attention heads ``[.., heads, head_dim]``, and GroupNorm as torch exports it
  (Reshape ``[N, G, -1]``, InstanceNormalization with ``G`` scale/bias entries, Reshape back to
  ``[N, C, H, W]``, Mul/Add by gamma/beta: whole norm groups, block ``C / G``). The Reshape's
  explicit channel entry (a constant, or a piece of a Concat of constants) is a member; a shape
  read at run time by ``Shape(t)`` follows the pruning when ``t``'s axis is made of the same
  groups, else the groups close. Past a Reshape's channel axis dimensions may be named
  (dynamic H, W) when those before it are known: the element count fixes them;
- a read of a tracked tensor's channel count closes its groups (the value would change under
  the reader): ``Size``, and a ``Shape`` entry that reaches anything but a Reshape of a tensor
  in the same groups or a Gather/Slice of other entries;
- MatMul of two activations (attention) unions the heads of both sides on batch axes;
- anything else that touches a tracked axis closes the groups with a note: the analysis never
  guesses. Graph outputs keep all their channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, has_subgraph, is_empty_tensor
from onnxopt.scopes import outer_reads

from .layout import Group, Layout, Member, Seg, rank_of
from .reshapes import ReshapeRules
from .rules import PassThroughRules

logger = logging.getLogger(__name__)

UNARY = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Erf",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Softsign",
    "Mish",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Identity",
    "Dropout",
    "Cast",
    "ThresholdedRelu",
    "Sin",
    "Cos",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "IsNaN",
    "IsInf",
    "Not",
    "Shrink",
    "Swish",
}
SPATIAL = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "Resize",
    "Upsample",
}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "PRelu"}
REDUCE = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceL2",
    "ReduceL1",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceLogSumExp",
}


@dataclass
class Analysis(PassThroughRules, ReshapeRules):
    """The result: groups (after union), tensor layouts and notes."""

    graph: gs.Graph
    groups: dict[int, Group] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    layouts: dict[str, Layout] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (Shape node, its input's layout, the channel axis' entry, entries): checked after the walk
    shape_reads: list = field(default_factory=list)

    # ------------------------------------------------------------------ union-find
    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def group(self, gid: int) -> Group:
        return self.groups[self.find(gid)]

    def new_group(self, size: int, node: gs.Node) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = Group(gid, int(size), producers=[node.name])
        return gid

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.size != gb.size:
            self.close_ids([ra, rb], f"{where}: couples {ga.size} with {gb.size} channels")
            return
        if ga.block != gb.block and 1 not in (ga.block, gb.block):
            self.close_ids(
                [ra, rb],
                f"{where}: units of {ga.block} and {gb.block} channels (heads or groups) differ",
            )
            return
        self.parent[rb] = ra
        ga.block = max(ga.block, gb.block)
        ga.members += gb.members
        ga.closed += gb.closed
        ga.producers += gb.producers
        del self.groups[rb]

    def whole_units(self, x: Layout, per: int, where: str, what: str) -> bool:
        """Make the groups of ``x`` lose only whole runs of ``per`` channels (conv-groups, norm
        groups): their block becomes ``per``. Closes ``x`` (False) when a group's span along the
        axis is not made of such runs or its channels already come in units of another size."""
        if per == 1:
            return True
        blocks = {self.group(s.gid).block for s in x.segs} - {1, per}
        if blocks:
            self.close(
                x,
                f"{where}: units of {min(blocks)} channels (heads or groups) and "
                f"{what}s of {per} differ",
            )
            return False
        off = 0
        for s in x.segs:
            g = self.group(s.gid)
            if x.expand != 1 or off % per or g.size % per:
                self.close(x, f"{where}: channel groups are not whole {what}s of {per} channels")
                return False
            off += g.size
        for s in x.segs:
            self.group(s.gid).block = per
        return True

    def close_ids(self, gids: list[int], reason: str) -> None:
        roots = {self.find(g) for g in gids}
        for r in roots:
            if reason not in self.groups[r].closed:
                self.groups[r].closed.append(reason)
        if roots and reason not in self.notes:
            self.notes.append(reason)

    def close(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            self.close_ids([s.gid for s in layout.segs], reason)

    def span(self, layout: Layout) -> int:
        return sum(self.group(s.gid).span(s.unit, layout.expand) for s in layout.segs)

    def add_members(
        self, layout: Layout, node: gs.Node, kind: str, index: int, axis: int, extra_offset: int = 0
    ) -> None:
        off = extra_offset
        for s in layout.segs:
            g = self.group(s.gid)
            g.members.append(Member(node.name, kind, index, axis, off, layout.expand, s.unit))
            off += g.span(s.unit, layout.expand)

    # ------------------------------------------------------------------ walk
    def run(self) -> Analysis:
        for node in self.graph.nodes:
            self.visit(node)
        self.check_shape_reads()
        for t in self.graph.outputs:
            self.close(self.layouts.get(t.name), f"graph output '{t.name}' keeps its channels")
        return self

    def lay(self, t: gs.Tensor) -> Layout | None:
        return None if is_empty_tensor(t) else self.layouts.get(t.name)

    def set(self, t: gs.Tensor, layout: Layout | None) -> None:
        if layout is not None:
            self.layouts[t.name] = layout

    #: ops handled by one method each: (method name, takes the node's layouts)
    HANDLERS = {
        **dict.fromkeys(SPATIAL, "spatial"),
        "BatchNormalization": "norm",
        "InstanceNormalization": "norm",
        "GroupNormalization": "group_norm",
        **dict.fromkeys(BINARY, "binary"),
        "Concat": "concat",
        "Flatten": "reshape",
        "Reshape": "reshape",
        "Transpose": "transpose",
        "Squeeze": "squeeze",
        "Unsqueeze": "squeeze",
        **dict.fromkeys(REDUCE | {"Softmax", "LogSoftmax", "Gather"}, "axis_op"),
        "Slice": "slice",
        "MatMul": "batched_matmul",
        "Split": "split",
        "CastLike": "cast_like",
    }

    def visit(self, node: gs.Node) -> None:
        op = node.op
        ins = [self.lay(t) for t in node.inputs]
        if has_subgraph(node):
            return self.body(node, ins)
        linear = self.linear(node, ins)
        if linear is not False:
            return linear
        if not any(ins):
            return None
        where = f"{op} '{node.name}'"
        tracked = [x for x in ins if x is not None]
        if op in ("Conv", "ConvTranspose", "Gemm"):  # weight not a constant (else above)
            return self.close_all(
                tracked,
                f"{where}: its weight is computed at run time (fold it first with --passes "
                f"cleanup; fold-constants keeps values above its size cap)",
            )
        if op in UNARY:
            if ins[0] is None or any(x is not None for x in ins[1:]):
                return self.close_all(tracked, f"{where}: channels reach a parameter input")
            return self.set(node.outputs[0], ins[0])
        if op in ("Shape", "Size"):
            return self.shape_read(node, ins[0], where)
        if op in self.HANDLERS:
            return getattr(self, self.HANDLERS[op])(node, ins, where)
        self.close_all(
            tracked, f"{where}: op not understood by the channel analysis; its channels stay"
        )
        return None

    def linear(self, node: gs.Node, ins: list) -> Any:
        """Conv / Gemm / 2-D MatMul with a constant weight start groups; False otherwise."""
        op, w = node.op, const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if op in ("Conv", "ConvTranspose") and w is not None:
            return self.conv(node, ins[0])
        if op == "Gemm" and w is not None:
            return self.gemm(node, ins[0])
        if op == "MatMul" and w is not None and w.ndim == 2 and const_value(node.inputs[0]) is None:
            return self.matmul(node, ins[0])
        return False

    def transpose(self, node: gs.Node, ins: list, where: str) -> None:
        perm = node.attrs.get("perm")
        r = rank_of(node.inputs[0])
        if perm is None and r is not None:
            perm = list(range(r))[::-1]
        if perm is None:
            return self.close_all([x for x in ins if x is not None], f"{where}: unknown rank")
        la = ins[0]
        return self.set(node.outputs[0], Layout(list(perm).index(la.axis), la.segs, la.expand))

    def cast_like(self, node: gs.Node, ins: list, where: str) -> None:
        """The output takes input 0's values and only input 1's dtype: input 1's channels do
        not reach it (raw exports write ``CastLike(bias, activation)``)."""
        if ins[0] is not None:
            return self.set(node.outputs[0], ins[0])
        return None

    def body(self, node: gs.Node, ins: list) -> None:
        """An If/Loop/Scan: channels that reach it (as an input, or read inside a body) stay;
        pruning does not enter subgraphs."""
        reads = [self.lay(t) for t in outer_reads(node)]
        tracked = [x for x in ins + reads if x is not None]
        bodies = ", ".join(k for k, a in node.attrs.items() if isinstance(a, gs.Graph))
        self.close_all(
            tracked,
            f"{node.op} '{node.name}': read inside its {bodies}; channel groups close at "
            "subgraph boundaries",
        )

    def close_all(self, layouts: list[Layout], reason: str) -> None:
        for la in layouts:
            self.close(la, reason)

    # ------------------------------------------------------------------ producers
    def conv(self, node: gs.Node, x: Layout | None) -> None:
        w = const_value(node.inputs[1])
        where = f"{node.op} '{node.name}'"
        transpose = node.op == "ConvTranspose"
        group = int(node.attrs.get("group", 1))
        cout = w.shape[1] * group if transpose else w.shape[0]
        cin = w.shape[0] if transpose else w.shape[1] * group
        out = node.outputs[0]
        has_bias = len(node.inputs) > 2 and not is_empty_tensor(node.inputs[2])
        if group == 1:
            if x is not None:
                if x.axis != 1 or self.span(x) != cin:
                    self.close(x, f"{where}: input channels do not line up with its weight")
                else:
                    self.add_members(x, node, "in", 1, 0 if transpose else 1)
            gid = self.new_group(cout, node)
            g = self.groups[gid]
            g.members.append(Member(node.name, "out", 1, 1 if transpose else 0))
            if has_bias:
                if const_value(node.inputs[2]) is None:
                    g.closed.append(f"{where}: bias is not a constant")
                g.members.append(Member(node.name, "param", 2, 0))
            self.set(out, Layout(1, (Seg(gid),)))
            return
        if not transpose and cin == cout:  # depthwise, or whole conv-groups (ResNeXt)
            return self.grouped(node, x, has_bias)
        if transpose:
            reason = f"{where}: grouped convolution (group={group}) ties channels to its groups"
        else:
            reason = (
                f"{where}: grouped convolution (group={group}) from {cin} to {cout} channels "
                f"(C_in != C_out, e.g. a channel multiplier) ties channels to its groups"
            )
        self.close(x, reason)
        gid = self.new_group(cout, node)
        self.groups[gid].closed.append(reason)
        self.set(out, Layout(1, (Seg(gid),)))

    def grouped(self, node: gs.Node, x: Layout | None, has_bias: bool) -> None:
        """Conv with ``group > 1`` and C_in = C_out: conv-group ``k`` reads and writes channels
        ``[k·per, (k+1)·per)``, so it is pass-through and only whole conv-groups go (block
        ``per``; ``per = 1`` is depthwise). Weight axis 0, bias and ``group`` are members."""
        w = const_value(node.inputs[1])
        per = int(w.shape[1])
        where = f"Conv '{node.name}'"
        if x is None:
            return
        what = "depthwise" if per == 1 else "grouped conv"
        if x.axis != 1 or self.span(x) != w.shape[0] or any(s.unit for s in x.segs):
            self.close(x, f"{where}: {what} input channels do not line up")
            return
        if not self.whole_units(x, per, where, "conv-group"):
            return
        self.add_members(x, node, "param", 1, 0)
        if has_bias:
            if const_value(node.inputs[2]) is None:
                self.close(x, f"{where}: bias is not a constant")
            self.add_members(x, node, "param", 2, 0)
        for s in x.segs:
            self.group(s.gid).members.append(Member(node.name, "group", expand=per))
        self.set(node.outputs[0], x)

    def gemm(self, node: gs.Node, x: Layout | None) -> None:
        w = const_value(node.inputs[1])
        where = f"Gemm '{node.name}'"
        trans_b = int(node.attrs.get("transB", 0))
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        if int(node.attrs.get("transA", 0)):
            self.close(x, f"{where}: transA=1 is not supported")
        elif x is not None:
            if x.axis != 1 or self.span(x) != w.shape[in_axis]:
                self.close(x, f"{where}: input features do not line up with its weight")
            else:
                self.add_members(x, node, "in", 1, in_axis)
        gid = self.new_group(w.shape[out_axis], node)
        g = self.groups[gid]
        g.members.append(Member(node.name, "out", 1, out_axis))
        if len(node.inputs) > 2 and not is_empty_tensor(node.inputs[2]):
            c = const_value(node.inputs[2])
            if c is None:
                g.closed.append(f"{where}: C is not a constant")
            elif c.ndim >= 1 and c.shape[-1] == w.shape[out_axis] and w.shape[out_axis] > 1:
                if c.ndim == 2 and c.shape[0] != 1:
                    g.closed.append(f"{where}: C is a full matrix")
                g.members.append(Member(node.name, "param", 2, c.ndim - 1))
        self.set(node.outputs[0], Layout(1, (Seg(gid),)))

    def matmul(self, node: gs.Node, x: Layout | None) -> None:
        w = const_value(node.inputs[1])
        where = f"MatMul '{node.name}'"
        r = rank_of(node.inputs[0]) or rank_of(node.outputs[0])
        if x is not None:
            if r is None or x.axis != r - 1 or self.span(x) != w.shape[0]:
                self.close(x, f"{where}: input features do not line up with its weight")
            else:
                self.add_members(x, node, "in", 1, 0)
        gid = self.new_group(w.shape[1], node)
        self.groups[gid].members.append(Member(node.name, "out", 1, 1))
        ro = rank_of(node.outputs[0]) or r
        if ro is None:
            self.groups[gid].closed.append(f"{where}: output rank unknown")
            return
        self.set(node.outputs[0], Layout(ro - 1, (Seg(gid),)))


def analyze(graph: gs.Graph, keep: list[str] | None = None) -> Analysis:
    """Build the channel groups of ``graph`` (which should carry inferred shapes)."""
    a = Analysis(graph).run()
    for name in keep or []:
        hit = [g for g in a.groups.values() if any(m.node == name for m in g.members)]
        if not hit:
            a.notes.append(f"--keep {name}: no channel group touches this node")
        for g in hit:
            g.closed.append(f"kept by --keep {name}")
    return a
