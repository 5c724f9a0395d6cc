"""Channel rules of the ops that carry channels through (see :mod:`.groups` for the list):
pass-through, normalization, element-wise, concat, squeeze, axis ops, batched MatMul, Split and
Slice; Reshape and Shape reads are in :mod:`.reshapes`.

Each rule reads the input layouts, records members, unions or closes groups, and sets the
output layout; mixed into :class:`.groups.Analysis`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_empty_tensor

from .layout import Layout, Member, dims_of, rank_of


class PassThroughRules:
    """Rules for pass-through, element-wise, concat, split/slice and attention ops."""

    # ------------------------------------------------------------------ pass-through
    def spatial(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        if x is None or x.axis != 1 or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        if node.op in ("Resize", "Upsample"):
            for k, t in enumerate(node.inputs[1:], start=1):
                v = const_value(t)
                if is_empty_tensor(t) or v is None or v.size == 0:
                    if not is_empty_tensor(t) and v is None:
                        return self.close(x, f"{where}: scales/sizes computed at run time")
                    continue
                if k == 3 or (k == 1 and node.op == "Resize" and v.dtype == np.int64):
                    return self.close(x, f"{where}: explicit sizes name the channel count")
                if (
                    k in (1, 2)
                    and v.ndim == 1
                    and v.size > 1
                    and float(v[1]) != 1.0
                    and (v.dtype != np.int64)
                ):
                    return self.close(x, f"{where}: scales the channel axis")
        self.set(node.outputs[0], x)

    def norm(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        if x is None or x.axis != 1 or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        n = 5 if node.op == "BatchNormalization" else 3
        for k in range(1, min(n, len(node.inputs))):
            if const_value(node.inputs[k]) is None:
                return self.close(x, f"{where}: parameters are not constants")
            self.add_members(x, node, "param", k, 0)
        self.set(node.outputs[0], x)

    def group_norm(self, node: gs.Node, ins: list, where: str) -> None:
        """GroupNormalization: pass-through in whole norm groups (block ``C / num_groups``); its
        scale and bias (``num_groups`` entries at opset 18, ``C`` from opset 21) and its
        ``num_groups`` are members."""
        x = ins[0]
        if (
            x is None
            or x.axis != 1
            or any(i is not None for i in ins[1:])
            or any(s.unit for s in x.segs)
        ):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        c, n = self.span(x), int(node.attrs.get("num_groups", 0))
        if n <= 0 or c % n:
            return self.close(x, f"{where}: num_groups={n} does not divide {c} channels")
        params = [const_value(t) for t in node.inputs[1:3]]
        if any(p is None for p in params):
            return self.close(x, f"{where}: parameters are not constants")
        if any(p.size not in (c, n) for p in params):
            return self.close(x, f"{where}: scale/bias have neither {c} nor {n} entries")
        if not self.whole_units(x, c // n, where, "norm group"):
            return None
        for k, p in enumerate(params, start=1):
            if p.size == c:
                self.add_members(x, node, "param", k, p.ndim - 1)
                continue
            off = 0
            for s in x.segs:  # one entry per norm group = per unit
                g = self.group(s.gid)
                g.members.append(Member(node.name, "param", k, p.ndim - 1, off, 1, True))
                off += g.units
        for s in x.segs:
            self.group(s.gid).members.append(Member(node.name, "group", expand=c // n))
        self.set(node.outputs[0], x)
        return None

    def binary(self, node: gs.Node, ins: list, where: str) -> None:
        ref_i = next(i for i, x in enumerate(ins) if x is not None)
        ref = ins[ref_i]
        ranks = [rank_of(t) for t in node.inputs]
        ro = rank_of(node.outputs[0]) or (max(ranks) if None not in ranks else None)
        tracked = [x for x in ins if x is not None]
        if ro is None or ranks[ref_i] is None:
            return self.close_all(tracked, f"{where}: unknown ranks")
        out_axis = ref.axis + ro - ranks[ref_i]
        span = self.span(ref)
        for k, t in enumerate(node.inputs):
            la, r = ins[k], ranks[k]
            a = None if r is None else out_axis - (ro - r)
            if la is not None:
                if (
                    a != la.axis
                    or len(la.segs) != len(ref.segs)
                    or la.expand != ref.expand
                    or any(s.unit != q.unit for s, q in zip(la.segs, ref.segs, strict=True))
                ):
                    return self.close_all(tracked, f"{where}: inputs' channels do not line up")
                for s, q in zip(la.segs, ref.segs, strict=True):
                    self.union(s.gid, q.gid, where)
                continue
            v = const_value(t)
            dims = list(v.shape) if v is not None else dims_of(t)
            if dims is None or a is None:
                return self.close_all(tracked, f"{where}: input '{t.name}' has unknown shape")
            if a < 0 or dims[a] == 1:
                continue
            if v is not None and dims[a] == span:
                self.add_members(ref, node, "param", k, a)
                continue
            return self.close_all(
                tracked, f"{where}: input '{t.name}' is not part of any channel group"
            )
        self.set(node.outputs[0], Layout(out_axis, ref.segs, ref.expand))

    def concat(self, node: gs.Node, ins: list, where: str) -> None:
        r = rank_of(node.outputs[0]) or rank_of(node.inputs[0])
        tracked = [x for x in ins if x is not None]
        if r is None:
            return self.close_all(tracked, f"{where}: unknown rank")
        axis = int(node.attrs.get("axis", 0)) % r
        if any(x is None for x in ins):
            return self.close_all(tracked, f"{where}: an input is not part of any channel group")
        if all(x.axis == axis for x in ins) and len({x.expand for x in ins}) == 1:
            segs = tuple(s for x in ins for s in x.segs)
            return self.set(node.outputs[0], Layout(axis, segs, ins[0].expand))
        if all(x.axis != axis for x in ins):
            return self.binary(node, ins, where)
        self.close_all(tracked, f"{where}: mixes channel axes")

    def squeeze(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            v = const_value(node.inputs[1])
            axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
        r_in, r_out = rank_of(node.inputs[0]), rank_of(node.outputs[0])
        if x is None or axes is None or r_in is None:
            return self.close_all([i for i in ins if i], f"{where}: axes unknown")
        if node.op == "Squeeze":
            axes = [a % r_in for a in axes]
            if x.axis in axes:
                return self.close(x, f"{where}: squeezes the channel axis")
            new = x.axis - sum(a < x.axis for a in axes)
        else:
            r_out = r_out or r_in + len(axes)
            axes = sorted(a % r_out for a in axes)
            keep = [i for i in range(r_out) if i not in axes]
            new = keep[x.axis]
        self.set(node.outputs[0], Layout(new, x.segs, x.expand))

    def axis_op(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        r = rank_of(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        op = node.op
        new = x.axis
        if op in ("Softmax", "LogSoftmax"):
            if int(node.attrs.get("axis", -1)) % r == x.axis:
                return self.close(x, f"{where}: normalizes over the channel axis")
        elif op == "Gather":
            axis = int(node.attrs.get("axis", 0)) % r
            idx = const_value(node.inputs[1])
            q = rank_of(node.inputs[1]) if idx is None else idx.ndim
            if axis == x.axis or q is None:
                return self.close(x, f"{where}: gathers along the channel axis")
            if axis < x.axis:
                new = x.axis + q - 1
        else:  # reductions
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1 and not is_empty_tensor(node.inputs[1]):
                v = const_value(node.inputs[1])
                if v is None:
                    return self.close(x, f"{where}: axes computed at run time")
                axes = [int(a) for a in np.atleast_1d(v)]
            if not axes:
                return self.close(x, f"{where}: reduces every axis")
            axes = [a % r for a in axes]
            if x.axis in axes:
                return self.close(x, f"{where}: reduces the channel axis")
            if not int(node.attrs.get("keepdims", 1)):
                new = x.axis - sum(a < x.axis for a in axes)
        self.set(node.outputs[0], Layout(new, x.segs, x.expand))

    def batched_matmul(self, node: gs.Node, ins: list, where: str) -> None:
        tracked = [x for x in ins if x is not None]
        ranks = [rank_of(t) for t in node.inputs[:2]]
        ro = rank_of(node.outputs[0])
        if None in ranks or ro is None:
            return self.close_all(tracked, f"{where}: unknown ranks")
        ref_i = 0 if ins[0] is not None else 1
        ref = ins[ref_i]
        out_axis = ref.axis + ro - ranks[ref_i]
        for k in (0, 1):
            la = ins[k]
            a = out_axis - (ro - ranks[k])
            if la is not None:
                if la.axis >= ranks[k] - 2 or a != la.axis or len(la.segs) != len(ref.segs):
                    return self.close_all(tracked, f"{where}: channels in a contracted axis")
                for s, q in zip(la.segs, ref.segs, strict=True):
                    if s.unit != q.unit:
                        return self.close_all(tracked, f"{where}: heads do not line up")
                    self.union(s.gid, q.gid, where)
            else:
                dims = dims_of(node.inputs[k])
                if dims is None or (a >= 0 and dims[a] != 1):
                    return self.close_all(tracked, f"{where}: other input has no channel group")
        self.set(node.outputs[0], Layout(out_axis, ref.segs, ref.expand))

    def split(self, node: gs.Node, ins: list, where: str) -> None:
        """Split: along another axis every output keeps the layout; along the channel axis only
        at group boundaries, with its constant ``split`` sizes as members."""
        x = ins[0]
        r = rank_of(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        axis = int(node.attrs.get("axis", 0)) % r
        if axis != x.axis:
            for t in node.outputs:
                self.set(t, x)
            return None
        sizes = (
            const_value(node.inputs[1])
            if len(node.inputs) > 1 and not is_empty_tensor(node.inputs[1])
            else None
        )
        if sizes is None:
            return self.close(x, f"{where}: split sizes are not a constant input")
        spans = [self.group(s.gid).span(s.unit, x.expand) for s in x.segs]
        bounds = list(np.cumsum(spans))
        cuts = list(np.cumsum(sizes.reshape(-1)))
        if not set(cuts) <= set(bounds) or cuts[-1] != bounds[-1]:
            return self.close(x, f"{where}: splits inside a channel group")
        start = 0
        for k, (t, cut) in enumerate(zip(node.outputs, cuts, strict=True)):
            segs = tuple(s for s, b in zip(x.segs, bounds, strict=True) if start < b <= cut)
            for s in segs:
                self.group(s.gid).members.append(
                    Member(node.name, "shape", 1, k, 0, x.expand, s.unit)
                )
            self.set(t, Layout(x.axis, segs, x.expand))
            start = cut
        return None

    def slice(self, node: gs.Node, ins: list, where: str) -> None:
        """Slice: along other axes the layout stays; along the channel axis (constant starts
        and ends, step 1) only at group boundaries, with its starts/ends entries as members
        (decremented by the channels pruned before them)."""
        x = ins[0]
        r = rank_of(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        given = [k < len(node.inputs) and not is_empty_tensor(node.inputs[k]) for k in range(5)]
        axes = const_value(node.inputs[3]) if given[3] else np.arange(r)
        if not given[1] or axes is None:
            return self.close(x, f"{where}: slices the channel axis")
        axes = [int(a) % r for a in np.atleast_1d(axes)]
        if x.axis not in axes:
            return self.set(node.outputs[0], x)
        k = axes.index(x.axis)
        starts, ends = const_value(node.inputs[1]), const_value(node.inputs[2])
        steps = const_value(node.inputs[4]) if given[4] else np.ones(len(axes), np.int64)
        if starts is None or ends is None or steps is None:
            return self.close(x, f"{where}: slices the channel axis at run-time positions")
        lo, hi, step = (int(v.reshape(-1)[k]) for v in (starts, ends, steps))
        bounds = [0, *np.cumsum([self.group(s.gid).span(s.unit, x.expand) for s in x.segs])]
        if step != 1 or lo < 0 or hi < 0:
            return self.close(x, f"{where}: slices the channel axis with a step or from its end")
        if lo not in bounds or min(hi, bounds[-1]) not in bounds or lo >= hi:
            return self.close(x, f"{where}: slices inside a channel group")
        segs = []
        for s, a, b in zip(x.segs, bounds[:-1], bounds[1:], strict=True):
            if lo <= a and b <= hi:
                segs.append(s)
            for index, pos in ((1, lo), (2, hi)):
                if b <= pos <= bounds[-1]:  # an end past the axis is clamped: left as is
                    self.group(s.gid).members.append(
                        Member(node.name, "shape", index, k, 0, x.expand, s.unit)
                    )
        self.set(node.outputs[0], Layout(x.axis, tuple(segs), x.expand))
        return None
