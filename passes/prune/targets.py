"""How many channels each group keeps.

- ``ratio`` r (per group): keep ``n - ⌊r·n⌋`` units, the highest-scoring ones;
- ``global``: rank every unit of every group by its score relative to its group's mean and drop
  the lowest fraction r of all units (or up to a threshold);
- ``target_flops`` f: the smallest pruning (a bisection on r, or on the global threshold) whose
  estimated MACs are at most ``f ×`` the original, then topped up: removed units go back, the
  best-scoring first (score relative to the group's mean, in steps of ``round_to``), while the
  estimate stays within the target. A uniform ratio moves every group at once, so with
  rounding its MACs jump (ResNet-18 at ``round_to`` 16: from 0.75 straight to 0.57 of the
  original); the top-up lands within one step of the target;
- constraints: at most ``max_ratio`` of a group's units removed, never fewer than one unit kept,
  and kept raw widths rounded up to a multiple of ``round_to`` (groups of single channels), so
  a group exactly ``round_to`` wide stays whole: a width off the runtime's channel block
  costs more than the channels it saves (onnxruntime's NCHWc convs need multiples of 16 with
  AVX-512, or fall back to NCHW with reorders). A group narrower than ``round_to`` is off
  the block whatever it keeps, so it is not rounded.

The MAC estimate scales each weighted layer's MACs by the kept fractions of its output and
input channels: ``MACs' = MACs · (k_out / n_out) · (k_in / n_in)``.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value

from .groups import Analysis
from .layout import Layout, is_static


@functools.lru_cache(maxsize=1)
def auto_round_to() -> int:
    """The width step that suits onnxruntime on this CPU: its convs run in the blocked NCHWc
    layout only when channel counts are multiples of MLAS's block, 16 with AVX-512F and 8
    with AVX2; elsewhere 8, a step most CPU kernels vectorize well. Off the block a pruned
    MobileNetV2-style net at 30 % fewer MACs ran 1.65x *slower* than the original here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask
        return 8
    return 16 if re.search(r"\bavx512f\b", flags) else 8


def _clamp(n: int, k: int, block: int, max_ratio: float, round_to: int) -> int:
    k = max(k, n - math.floor(n * max_ratio), 1)
    if round_to > 1 and block == 1 and n >= round_to:  # narrower: off the block anyway
        k = min(n, math.ceil(k / round_to) * round_to)
    return min(k, n)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def by_ratio(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    ratio: float,
    *,
    max_ratio: float,
    round_to: int,
) -> dict[int, np.ndarray]:
    out = {}
    for gid, s in scores.items():
        g = analysis.groups[gid]
        k = _clamp(g.units, g.units - math.floor(g.units * ratio), g.block, max_ratio, round_to)
        out[gid] = _top(s, k)
    return out


def by_threshold(
    analysis: Analysis, scores: dict[int, np.ndarray], t: float, *, max_ratio: float, round_to: int
) -> dict[int, np.ndarray]:
    out = {}
    for gid, s in scores.items():
        g = analysis.groups[gid]
        rel = s / max(float(np.mean(s)), 1e-30)
        k = _clamp(g.units, int((rel >= t).sum()), g.block, max_ratio, round_to)
        out[gid] = _top(s, k)
    return out


def global_threshold(scores: dict[int, np.ndarray], ratio: float) -> float:
    rel = np.concatenate([s / max(float(np.mean(s)), 1e-30) for s in scores.values()])
    if rel.size == 0 or ratio <= 0:
        return -np.inf
    return float(np.quantile(rel, min(ratio, 1.0), method="higher"))


class MacModel:
    """Estimated MACs of the weighted layers under a pruning plan."""

    def __init__(self, analysis: Analysis) -> None:
        self.a = analysis
        self.base: dict[str, float] = {}
        self.in_len: dict[str, int] = {}
        for n in analysis.graph.nodes:
            macs, in_len = _node_macs(n)
            if macs:
                self.base[n.name] = macs
                self.in_len[n.name] = in_len
        self.in_members: dict[str, list] = {}
        for gid, g in analysis.groups.items():
            for m in g.members:
                if m.kind == "in":
                    self.in_members.setdefault(m.node, []).append((gid, m))
        self.out_layout: dict[str, Layout] = {}
        for n in analysis.graph.nodes:
            if n.name in self.base and n.outputs and n.outputs[0].name in analysis.layouts:
                self.out_layout[n.name] = analysis.layouts[n.outputs[0].name]

    @property
    def total(self) -> float:
        return float(sum(self.base.values()))

    def frac(self, layout: Layout, kept: dict[int, np.ndarray]) -> float:
        tot = kept_sum = 0.0
        for s in layout.segs:
            gid = self.a.find(s.gid)
            g = self.a.groups[gid]
            n = g.units if s.unit else g.size
            tot += n
            k = len(kept[gid]) if gid in kept else g.units
            kept_sum += k if s.unit else k * g.block
        return kept_sum / tot if tot else 1.0

    def node_macs(self, kept: dict[int, np.ndarray]) -> dict[str, tuple[float, float]]:
        out = {}
        for name, base in self.base.items():
            f = 1.0
            if name in self.out_layout:
                f *= self.frac(self.out_layout[name], kept)
            gone = 0
            for gid, m in self.in_members.get(name, []):
                root = self.a.find(gid)
                g = self.a.groups[root]
                if root in kept:
                    lost = g.units - len(kept[root])
                    gone += lost * (1 if m.unit else g.block) * m.expand
            if self.in_len.get(name):
                f *= 1.0 - gone / self.in_len[name]
            out[name] = (base, base * f)
        return out

    def estimate(self, kept: dict[int, np.ndarray]) -> float:
        return float(sum(v[1] for v in self.node_macs(kept).values()))


def _prod(dims) -> float:
    return float(np.prod([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in dims]))


def _weight_shape(t: gs.Tensor) -> list | None:
    w = const_value(t)
    if w is not None:
        return list(w.shape)
    return list(t.shape) if t.shape is not None and is_static(t.shape) else None


def _node_macs(n: gs.Node) -> tuple[float, int]:
    """(MACs with dynamic dims as 1, input-channel length of the weight) of a weighted node.
    A weight computed at run time counts by its inferred shape: it cannot be pruned, but its
    MACs are part of the total a ``target_flops`` is a fraction of."""
    if n.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not n.outputs:
        return 0.0, 0
    out = n.outputs[0].shape
    w = _weight_shape(n.inputs[1])
    if out is None:
        return 0.0, 0
    if n.op == "Conv" and w is not None:
        return _prod(out) * float(np.prod(w[1:])), int(w[1])
    if n.op == "ConvTranspose" and w is not None:
        x = n.inputs[0].shape
        return (_prod(x) * float(np.prod(w[1:])) if x is not None else 0.0), int(w[0])
    if n.op == "Gemm" and w is not None:
        k = w[1] if int(n.attrs.get("transB", 0)) else w[0]
        return _prod(out) * k, int(k)
    a = n.inputs[0].shape
    if a is None or not a or not is_static(a[-1:]):
        return 0.0, 0
    return _prod(out) * a[-1], int(a[-1]) if const_value(n.inputs[1]) is not None else 0


def select(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    *,
    ratio: float,
    target_flops: float | None,
    global_rank: bool,
    max_ratio: float,
    round_to: int,
) -> tuple[dict[int, np.ndarray], MacModel]:
    """The kept units per group for the requested target: ``target_flops`` (a fraction of the
    MACs) when given, else ``ratio``."""
    macs = MacModel(analysis)
    kw = {"max_ratio": max_ratio, "round_to": round_to}

    def plan(x: float) -> dict[int, np.ndarray]:
        if global_rank:
            return by_threshold(analysis, scores, global_threshold(scores, x), **kw)
        return by_ratio(analysis, scores, x, **kw)

    if target_flops is None:
        return plan(ratio), macs
    goal = target_flops * macs.total
    lo, hi = 0.0, 1.0
    best = plan(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        p = plan(mid)
        if macs.estimate(p) <= goal:
            hi, best = mid, p
        else:
            lo = mid
    return top_up(analysis, scores, best, macs, goal, round_to), macs


def top_up(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    kept: dict[int, np.ndarray],
    macs: MacModel,
    goal: float,
    round_to: int,
) -> dict[int, np.ndarray]:
    """Give removed units back, best relative score first, while the MACs stay <= ``goal``.

    A group whose next step does not fit is dropped for good: giving units back only adds
    MACs, so it would not fit later either. Each group is tried once more than it grows.
    """
    kept = dict(kept)
    heap: list[tuple[float, int, int]] = []

    def push(gid: int) -> None:
        g, s = analysis.groups[gid], scores[gid]
        k = len(kept[gid])
        step = round_to if (g.block == 1 and 1 < round_to <= g.units) else 1  # as _clamp
        nk = min(g.units, k + step)
        if nk <= k:
            return
        order = np.argsort(-s, kind="stable")
        gain = float(np.mean(s[order[k:nk]])) / max(float(np.mean(s)), 1e-30)
        heapq.heappush(heap, (-gain, gid, nk))

    for gid in kept:
        push(gid)
    while heap:
        _, gid, nk = heapq.heappop(heap)
        old = kept[gid]
        kept[gid] = _top(scores[gid], nk)
        if macs.estimate(kept) > goal:
            kept[gid] = old
            continue
        push(gid)
    return kept
