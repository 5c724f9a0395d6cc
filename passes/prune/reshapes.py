"""Channel rules of Flatten / Reshape and of reads of a tracked tensor's shape (Shape, Size),
mixed into :class:`.groups.Analysis` with :class:`.rules.PassThroughRules`.

A Reshape may keep the channel axis, flatten it with the axes after it (``expand``), split it
into whole units ``[.., C, S..] -> [.., C/per, per·S..]`` (attention heads, torch's GroupNorm
``[N, G, -1]``) or merge whole units back into channels. Its explicit channel entry (a constant,
or a piece of a Concat of constants) becomes a member; an entry read at run time through
``Shape(t)`` must follow the pruning by itself, and every other read of a pruned channel count
closes the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_empty_tensor, producer

from .layout import Layout, Member, Seg, dims_of, is_static, rank_of


@dataclass(frozen=True)
class _Shapes:
    """A Reshape's input and output dimensions around the channel axis ``c``."""

    din: list
    dout: list
    c: int

    @property
    def e_in(self) -> int | None:
        """Input entries per channel (product of the dimensions after it), None if not static."""
        inner = self.din[self.c + 1 :]
        return int(np.prod(inner)) if is_static(inner) else None

    @property
    def out_inner(self) -> list:
        return self.dout[self.c + 1 :]

    @property
    def e_out(self) -> int | None:
        return int(np.prod(self.out_inner)) if is_static(self.out_inner) else None

    def rest(self, num: int, den: int) -> bool:
        """The output's dimensions after the channel axis hold ``num / den`` times the input's:
        checked when static, else implied by the element count."""
        e_in, e_out = self.e_in, self.e_out
        return e_in is None or e_out is None or e_out * den == e_in * num


class ReshapeRules:
    """Rules for Flatten, Reshape, Shape and Size."""

    def reshape(self, node: gs.Node, ins: list, where: str) -> None:
        """Flatten / Reshape. The channel axis may stay, be flattened with the axes after it
        (``expand``), be split into whole units ``[.., C, S..] -> [.., C/per, per·S..]`` (heads,
        or torch's GroupNorm ``[N, G, -1]``: block ``per``, the axis then counts units), or merge
        whole units back into channels (the inverse). The dimensions after the channel axis need
        not be static when those before it are known: the element count then fixes them."""
        x = ins[0]
        if x is None or any(i is not None for i in ins[1:]):
            return self.close_all([i for i in ins if i], f"{where}: channels in the shape input")
        din, dout = dims_of(node.inputs[0]), dims_of(node.outputs[0])
        if din is None or dout is None:
            return self.close(x, f"{where}: shapes unknown (run shape inference)")
        d = _Shapes(din, dout, x.axis)
        if not isinstance(din[d.c], (int, np.integer)):
            return self.close(x, f"{where}: the channel dimension is not static")
        if node.op == "Flatten":
            axis = int(node.attrs.get("axis", 1)) % max(len(din), 1)
            if axis != d.c:
                return self.close(x, f"{where}: flattens across the channel axis at {axis}")
            if d.e_in is None:
                return self.close(x, f"{where}: dimensions after the channel axis are not static")
            return self.set(node.outputs[0], Layout(d.c, x.segs, x.expand * d.e_in))
        if len(dout) <= d.c or [str(v) for v in dout[: d.c]] != [str(v) for v in din[: d.c]]:
            return self.close(x, f"{where}: moves the dimensions before the channel axis")
        if not isinstance(dout[d.c], (int, np.integer)):
            return self.close(x, f"{where}: the output channel dimension is not static")
        if (d.e_in is None or d.e_out is None) and None in din[: d.c]:
            return self.close(x, f"{where}: dimensions after the channel axis are not static")
        return self._reshape_channels(node, x, d, where)

    def _reshape_channels(self, node: gs.Node, x: Layout, d: _Shapes, where: str) -> None:
        """A Reshape whose channel axis stays, is flattened, splits into whole units or merges
        them back; anything else closes."""
        c, cin, oc = d.c, d.din[d.c], d.dout[d.c]
        units = [s.unit for s in x.segs]
        blocks = {self.group(s.gid).block for s in x.segs}
        per = blocks.pop() if len(blocks) == 1 else 0  # channels per unit when merging back
        whole = x.expand == 1 and self.span(x) == cin
        if oc == cin and d.rest(1, 1):  # channel axis unchanged
            layout, factor = x, x.expand
        elif d.e_in is not None and oc == cin * d.e_in and not d.out_inner:  # flatten
            layout = Layout(c, x.segs, x.expand * d.e_in)
            factor = x.expand * d.e_in
        elif (
            d.out_inner
            and not any(units)
            and whole
            and 0 < oc < cin
            and cin % oc == 0
            and d.rest(cin // oc, 1)
        ):  # split
            if not self.whole_units(x, cin // oc, f"{where} ({d.din} -> {d.dout})", "unit"):
                return None
            layout = Layout(c, tuple(Seg(s.gid, unit=True) for s in x.segs))
            return self._shape_member(node, c, layout, unit=True, factor=1, out=layout)
        elif all(units) and whole and per and oc == cin * per and d.rest(1, per):  # merge units
            layout = Layout(c, tuple(Seg(s.gid) for s in x.segs))
            return self._shape_member(node, c, layout, unit=False, factor=1, out=layout)
        elif any(units):
            return self.close(
                x,
                f"{where}: reshape {d.din} -> {d.dout} does not merge whole "
                f"units back into channels",
            )
        else:
            return self.close(x, f"{where}: reshape {d.din} -> {d.dout} splits the channel axis")
        return self._shape_member(
            node, c, layout, unit=x.segs[0].unit, factor=factor, out=layout, src=x
        )

    def _shape_member(
        self,
        node: gs.Node,
        pos: int,
        layout: Layout,
        *,
        unit: bool,
        factor: int,
        out: Layout,
        src: Layout | None = None,
    ) -> None:
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
        la, r, start = self.lay(t), rank_of(t), int(p.attrs.get("start", 0))
        axis = None if r is None else pos + (start + r if start < 0 else start)
        if (
            la is None
            or la.axis != axis
            or la.expand != out.expand
            or [(self.find(s.gid), s.unit) for s in la.segs]
            != [(self.find(s.gid), s.unit) for s in out.segs]
        ):
            return self.close(
                out,
                f"{where}: shape entry {pos} is read from the shape of "
                f"'{t.name}', whose axis is not made of the same channels",
            )
        self.set(node.outputs[0], out)
        return None

    def shape_read(self, node: gs.Node, x: Layout, where: str) -> None:
        """Shape(t) / Size(t) of a tracked ``t``: the value changes when ``t`` is pruned. A Shape
        whose range holds the channel axis is checked once the walk is done (its readers may
        come later); Size closes at once."""
        if node.op == "Size":
            return self.close(x, f"{where}: reads the element count of a pruned tensor")
        r = rank_of(node.inputs[0])
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
                why = (
                    f"Shape '{node.name}': the channel count of '{node.inputs[0].name}' "
                    f"is read by {bad}"
                )
                self.close_all([x, *reshaped], why)


def _skips_entry(c: gs.Node, shape: gs.Tensor, pos: int, n: int) -> bool:
    """Whether consumer ``c`` of a Shape output leaves its entry ``pos`` alone."""
    if c.inputs[0] is not shape:
        return False
    if c.op == "Gather" and int(c.attrs.get("axis", 0)) == 0:
        idx = const_value(c.inputs[1])
        if idx is None:
            return False
        return pos not in {int(i) % n for i in np.atleast_1d(idx)}
    if c.op == "Slice":  # a Shape output is 1-D: axes can only be 0
        given = [i < len(c.inputs) and not is_empty_tensor(c.inputs[i]) for i in range(5)]
        vals = [const_value(c.inputs[i]) if given[i] else None for i in range(5)]
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
    v = const_value(t)
    if v is not None:
        return node, 1, pos, int(v.reshape(-1)[pos])
    p = producer(t)
    if p is None or p.op != "Concat":
        return None
    start = 0
    for k, piece in enumerate(p.inputs):
        pv = const_value(piece)
        n = (
            pv.size
            if pv is not None
            else (
                int(np.prod(piece.shape))
                if piece.shape is not None and is_static(piece.shape)
                else None
            )
        )
        if n is None:
            return None
        if start <= pos < start + n:
            if pv is None:
                return None
            return p, k, pos - start, int(pv.reshape(-1)[pos - start])
        start += n
    return None
