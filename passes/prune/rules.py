"""Channel rules of the ops that carry channels through (see :mod:`.groups` for the list).

Each rule reads the input layouts, records members, unions or closes groups, and sets the
output layout; mixed into :class:`.groups.Analysis`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import is_empty_tensor, producer

from .layout import Layout, Member, Seg, cval


def _dims(t: gs.Tensor) -> list | None:
    return None if t.shape is None else list(t.shape)


def _rank(t: gs.Tensor) -> int | None:
    return None if t.shape is None else len(t.shape)


def _static(dims: list) -> bool:
    return all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims)


class PassThroughRules:
    """Rules for pass-through, element-wise, concat, reshape and attention ops."""

    # ------------------------------------------------------------------ pass-through
    def spatial(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        if x is None or x.axis != 1 or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        if node.op in ("Resize", "Upsample"):
            for k, t in enumerate(node.inputs[1:], start=1):
                v = cval(t)
                if is_empty_tensor(t) or v is None or v.size == 0:
                    if not is_empty_tensor(t) and v is None:
                        return self.close(x, f"{where}: scales/sizes computed at run time")
                    continue
                if k == 3 or (k == 1 and node.op == "Resize" and v.dtype == np.int64):
                    return self.close(x, f"{where}: explicit sizes name the channel count")
                if k in (1, 2) and v.ndim == 1 and v.size > 1 and float(v[1]) != 1.0 and (
                    v.dtype != np.int64
                ):
                    return self.close(x, f"{where}: scales the channel axis")
        self.set(node.outputs[0], x)

    def norm(self, node: gs.Node, ins: list, where: str) -> None:
        x = ins[0]
        if x is None or x.axis != 1 or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        n = 5 if node.op == "BatchNormalization" else 3
        for k in range(1, min(n, len(node.inputs))):
            if cval(node.inputs[k]) is None:
                return self.close(x, f"{where}: parameters are not constants")
            self.add_members(x, node, "param", k, 0)
        self.set(node.outputs[0], x)

    def group_norm(self, node: gs.Node, ins: list, where: str) -> None:
        """GroupNormalization: pass-through in whole norm groups (block ``C / num_groups``); its
        scale and bias (``num_groups`` entries at opset 18, ``C`` from opset 21) and its
        ``num_groups`` are members."""
        x = ins[0]
        if x is None or x.axis != 1 or any(i is not None for i in ins[1:]) or any(
            s.unit for s in x.segs
        ):
            return self.close_all([i for i in ins if i], f"{where}: channels not on axis 1")
        c, n = self.span(x), int(node.attrs.get("num_groups", 0))
        if n <= 0 or c % n:
            return self.close(x, f"{where}: num_groups={n} does not divide {c} channels")
        params = [cval(t) for t in node.inputs[1:3]]
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
        ranks = [_rank(t) for t in node.inputs]
        ro = _rank(node.outputs[0]) or (max(ranks) if None not in ranks else None)
        tracked = [x for x in ins if x is not None]
        if ro is None or ranks[ref_i] is None:
            return self.close_all(tracked, f"{where}: unknown ranks")
        out_axis = ref.axis + ro - ranks[ref_i]
        span = self.span(ref)
        for k, t in enumerate(node.inputs):
            la, r = ins[k], ranks[k]
            a = None if r is None else out_axis - (ro - r)
            if la is not None:
                if a != la.axis or len(la.segs) != len(ref.segs) or la.expand != ref.expand or any(
                    s.unit != q.unit for s, q in zip(la.segs, ref.segs, strict=True)
                ):
                    return self.close_all(tracked, f"{where}: inputs' channels do not line up")
                for s, q in zip(la.segs, ref.segs, strict=True):
                    self.union(s.gid, q.gid, where)
                continue
            v = cval(t)
            dims = list(v.shape) if v is not None else _dims(t)
            if dims is None or a is None:
                return self.close_all(tracked, f"{where}: input '{t.name}' has unknown shape")
            if a < 0 or dims[a] == 1:
                continue
            if v is not None and dims[a] == span:
                self.add_members(ref, node, "param", k, a)
                continue
            return self.close_all(tracked, f"{where}: input '{t.name}' is not part of any "
                                           f"channel group")
        self.set(node.outputs[0], Layout(out_axis, ref.segs, ref.expand))

    def concat(self, node: gs.Node, ins: list, where: str) -> None:
        r = _rank(node.outputs[0]) or _rank(node.inputs[0])
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
            v = cval(node.inputs[1])
            axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
        r_in, r_out = _rank(node.inputs[0]), _rank(node.outputs[0])
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
        r = _rank(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        op = node.op
        new = x.axis
        if op in ("Softmax", "LogSoftmax"):
            if int(node.attrs.get("axis", -1)) % r == x.axis:
                return self.close(x, f"{where}: normalizes over the channel axis")
        elif op == "Gather":
            axis = int(node.attrs.get("axis", 0)) % r
            idx = cval(node.inputs[1])
            q = _rank(node.inputs[1]) if idx is None else idx.ndim
            if axis == x.axis or q is None:
                return self.close(x, f"{where}: gathers along the channel axis")
            if axis < x.axis:
                new = x.axis + q - 1
        else:  # reductions
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1 and not is_empty_tensor(node.inputs[1]):
                v = cval(node.inputs[1])
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
        ranks = [_rank(t) for t in node.inputs[:2]]
        ro = _rank(node.outputs[0])
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
                dims = _dims(node.inputs[k])
                if dims is None or (a >= 0 and dims[a] != 1):
                    return self.close_all(tracked, f"{where}: other input has no channel group")
        self.set(node.outputs[0], Layout(out_axis, ref.segs, ref.expand))

    # ------------------------------------------------------------------ reshapes
    def reshape(self, node: gs.Node, ins: list, where: str) -> None:
        """Flatten / Reshape. The channel axis may stay, be flattened with the axes after it
        (``expand``), be split into whole units ``[.., C, S..] -> [.., C/per, per·S..]`` (heads,
        or torch's GroupNorm ``[N, G, -1]``: block ``per``, the axis then counts units), or merge
        whole units back into channels (the inverse). The dimensions after the channel axis need
        not be static when those before it are known: the element count then fixes them."""
        x = ins[0]
        if x is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in the shape input")
        din, dout = _dims(node.inputs[0]), _dims(node.outputs[0])
        if din is None or dout is None:
            return self.close(x, f"{where}: shapes unknown (run shape inference)")
        c = x.axis
        inner = din[c + 1 :]
        e_in = int(np.prod(inner)) if _static(inner) else None
        if not isinstance(din[c], (int, np.integer)):
            return self.close(x, f"{where}: the channel dimension is not static")
        if node.op == "Flatten":
            axis = int(node.attrs.get("axis", 1)) % max(len(din), 1)
            if axis != c:
                return self.close(x, f"{where}: flattens across the channel axis at {axis}")
            if e_in is None:
                return self.close(x, f"{where}: dimensions after the channel axis are not static")
            return self.set(node.outputs[0], Layout(c, x.segs, x.expand * e_in))
        if len(dout) <= c or [str(d) for d in dout[:c]] != [str(d) for d in din[:c]]:
            return self.close(x, f"{where}: moves the dimensions before the channel axis")
        oc, out_inner = dout[c], dout[c + 1 :]
        eo = int(np.prod(out_inner)) if _static(out_inner) else None
        if not isinstance(oc, (int, np.integer)):
            return self.close(x, f"{where}: the output channel dimension is not static")
        if (e_in is None or eo is None) and None in din[:c]:
            return self.close(x, f"{where}: dimensions after the channel axis are not static")

        def rest(num: int, den: int) -> bool:
            """The output's dimensions after the channel axis hold ``num / den`` times the
            input's: checked when static, else implied by the element count."""
            return e_in is None or eo is None or eo * den == e_in * num

        units = [s.unit for s in x.segs]
        blocks = {self.group(s.gid).block for s in x.segs}
        per = blocks.pop() if len(blocks) == 1 else 0  # channels per unit when merging back
        if oc == din[c] and rest(1, 1):  # channel axis unchanged
            layout = x
            factor = x.expand
        elif e_in is not None and oc == din[c] * e_in and not out_inner:  # flatten
            layout = Layout(c, x.segs, x.expand * e_in)
            factor = x.expand * e_in
        elif (out_inner and not any(units) and x.expand == 1 and self.span(x) == din[c]
              and 0 < oc < din[c] and din[c] % oc == 0 and rest(din[c] // oc, 1)):  # split
            if not self.whole_units(x, din[c] // oc, f"{where} ({din} -> {dout})", "unit"):
                return None
            layout = Layout(c, tuple(Seg(s.gid, unit=True) for s in x.segs))
            return self._shape_member(node, c, layout, unit=True, factor=1, out=layout)
        elif (all(units) and x.expand == 1 and self.span(x) == din[c] and per
              and oc == din[c] * per and rest(1, per)):  # merge units
            layout = Layout(c, tuple(Seg(s.gid) for s in x.segs))
            return self._shape_member(node, c, layout, unit=False, factor=1, out=layout)
        elif any(units):
            return self.close(x, f"{where}: reshape {din} -> {dout} does not merge whole units "
                                 f"back into channels")
        else:
            return self.close(x, f"{where}: reshape {din} -> {dout} splits the channel axis")
        return self._shape_member(node, c, layout, unit=x.segs[0].unit, factor=factor,
                                  out=layout, src=x)

    def _shape_member(self, node: gs.Node, pos: int, layout: Layout, *, unit: bool, factor: int,
                      out: Layout, src: Layout | None = None) -> None:
        """Record the Reshape shape entry at ``pos`` as a member (or close if not rewritable)."""
        where = f"Reshape '{node.name}'"
        holder = _shape_entry(node, pos)
        if holder is None:
            return self._shape_follows(node, pos, out, where)
        hnode, index, elem, value = holder
        if value not in (-1, 0):
            segs = (src or out).segs
            for s in segs:
                self.group(s.gid).members.append(
                    Member(hnode.name, "shape", index, elem, 0, factor, unit and s.unit)
                )
        self.set(node.outputs[0], out)
        return None

    def _shape_follows(self, node: gs.Node, pos: int, out: Layout, where: str) -> None:
        """A shape read at run time by ``Shape(t)`` (torch's Reshape back to ``x.shape``): entry
        ``pos`` follows the pruning by itself when ``t``'s axis ``pos`` is made of the same groups
        as the output's channel axis; anything else closes."""
        p = producer(node.inputs[1])
        if p is None or p.op != "Shape":
            return self.close(out, f"{where}: shape entry {pos} is computed at run time")
        t = p.inputs[0]
        la, r, start = self.lay(t), _rank(t), int(p.attrs.get("start", 0))
        axis = None if r is None else pos + (start + r if start < 0 else start)
        if la is None or la.axis != axis or la.expand != out.expand or [
            (self.find(s.gid), s.unit) for s in la.segs
        ] != [(self.find(s.gid), s.unit) for s in out.segs]:
            return self.close(out, f"{where}: shape entry {pos} is read from the shape of "
                                   f"'{t.name}', whose axis is not made of the same channels")
        self.set(node.outputs[0], out)
        return None

    def shape_read(self, node: gs.Node, x: Layout, where: str) -> None:
        """Shape(t) / Size(t) of a tracked ``t``: the value changes when ``t`` is pruned. A Shape
        whose range holds the channel axis is checked once the walk is done (its readers may
        come later); Size closes at once."""
        if node.op == "Size":
            return self.close(x, f"{where}: reads the element count of a pruned tensor")
        r = _rank(node.inputs[0])
        if r is None:
            return self.close(x, f"{where}: rank unknown")
        start, end = (int(node.attrs.get(k, d)) for k, d in (("start", 0), ("end", r)))
        start, end = (min(max(v + r if v < 0 else v, 0), r) for v in (start, end))
        if start <= x.axis < end:
            self.shape_reads.append((node, x, x.axis - start, end - start))
        return None

    def check_shape_reads(self) -> None:
        """Every reader of a Shape's channel entry must take the new value: a Reshape of a
        tensor in the same groups (pruned alike), or a Gather / Slice with constant positions
        that leave the entry out. Anything else closes the groups, and those of any tensor
        reshaped to that shape."""
        for node, x, pos, n in self.shape_reads:
            out = node.outputs[0]
            bad = "a graph output" if any(t is out for t in self.graph.outputs) else None
            groups = [self.find(s.gid) for s in x.segs]
            reshaped = []  # tracked tensors reshaped to this shape: they must prune alike
            for c in list(out.outputs):
                data = self.lay(c.inputs[0]) if c.op == "Reshape" else None
                if data is not None and c.inputs[1] is out:
                    reshaped.append(data)
                    if [self.find(s.gid) for s in data.segs] == groups:
                        continue
                elif _skips_entry(c, out, pos, n):
                    continue
                bad = bad or f"{c.op} '{c.name}'"
            if bad:
                why = (f"Shape '{node.name}': the channel count of '{node.inputs[0].name}' "
                       f"is read by {bad}")
                self.close_all([x, *reshaped], why)

    def split(self, node: gs.Node, ins: list, where: str) -> None:
        """Split: along another axis every output keeps the layout; along the channel axis only
        at group boundaries, with its constant ``split`` sizes as members."""
        x = ins[0]
        r = _rank(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        axis = int(node.attrs.get("axis", 0)) % r
        if axis != x.axis:
            for t in node.outputs:
                self.set(t, x)
            return None
        sizes = cval(node.inputs[1]) if len(node.inputs) > 1 and not is_empty_tensor(
            node.inputs[1]) else None
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
                    Member(node.name, "shape", 1, k, 0, x.expand, s.unit))
            self.set(t, Layout(x.axis, segs, x.expand))
            start = cut
        return None

    def slice(self, node: gs.Node, ins: list, where: str) -> None:
        """Slice: along other axes the layout stays; along the channel axis (constant starts
        and ends, step 1) only at group boundaries, with its starts/ends entries as members
        (decremented by the channels pruned before them)."""
        x = ins[0]
        r = _rank(node.inputs[0])
        if x is None or r is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in a side input")
        given = [k < len(node.inputs) and not is_empty_tensor(node.inputs[k]) for k in range(5)]
        axes = cval(node.inputs[3]) if given[3] else np.arange(r)
        if not given[1] or axes is None:
            return self.close(x, f"{where}: slices the channel axis")
        axes = [int(a) % r for a in np.atleast_1d(axes)]
        if x.axis not in axes:
            return self.set(node.outputs[0], x)
        k = axes.index(x.axis)
        starts, ends = cval(node.inputs[1]), cval(node.inputs[2])
        steps = cval(node.inputs[4]) if given[4] else np.ones(len(axes), np.int64)
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
                        Member(node.name, "shape", index, k, 0, x.expand, s.unit))
        self.set(node.outputs[0], Layout(x.axis, tuple(segs), x.expand))
        return None


def _skips_entry(c: gs.Node, shape: gs.Tensor, pos: int, n: int) -> bool:
    """Whether consumer ``c`` of a Shape output leaves its entry ``pos`` alone."""
    if c.inputs[0] is not shape:
        return False
    if c.op == "Gather" and int(c.attrs.get("axis", 0)) == 0:
        idx = cval(c.inputs[1])
        if idx is None:
            return False
        return pos not in {int(i) % n for i in np.atleast_1d(idx)}
    if c.op == "Slice":  # a Shape output is 1-D: axes can only be 0
        given = [i < len(c.inputs) and not is_empty_tensor(c.inputs[i]) for i in range(5)]
        vals = [cval(c.inputs[i]) if given[i] else None for i in range(5)]
        if not (given[1] and given[2]) or any(given[i] and vals[i] is None for i in (1, 2, 3, 4)):
            return False
        if given[4] and int(vals[4].reshape(-1)[0]) != 1:
            return False
        lo, hi = (int(vals[i].reshape(-1)[0]) for i in (1, 2))
        lo, hi = (min(max(v + n if v < 0 else v, 0), n) for v in (lo, hi))
        return not lo <= pos < hi
    return False


def _shape_entry(node: gs.Node, pos: int) -> tuple[gs.Node, int, int, int] | None:
    """Where a Reshape's shape entry ``pos`` lives: (node, input index, element, value)."""
    t = node.inputs[1]
    v = cval(t)
    if v is not None:
        return node, 1, pos, int(v.reshape(-1)[pos])
    p = producer(t)
    if p is None or p.op != "Concat":
        return None
    start = 0
    for k, piece in enumerate(p.inputs):
        pv = cval(piece)
        n = pv.size if pv is not None else (
            int(np.prod(piece.shape)) if piece.shape is not None and _static(piece.shape) else None
        )
        if n is None:
            return None
        if start <= pos < start + n:
            if pv is None:
                return None
            return p, k, pos - start, int(pv.reshape(-1)[pos - start])
        start += n
    return None

