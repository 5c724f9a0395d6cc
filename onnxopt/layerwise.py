"""Layer-by-layer comparison of two models in bounded memory.

Every intermediate tensor that exists in both models is compared on the same inputs. Tensors
are matched by name, else through provenance (:mod:`onnxopt.provenance`): a tensor of ``b``
whose producer came from original nodes ``O`` stands for the output of the last node of ``O``
in ``a``. Per tensor, over every run (float64 sums)::

    cosine = Σab / √(Σa²·Σb²)      SQNR = 10·log10(Σa² / Σ(a−b)²) dB
    error  = max|a−b| / max(1, max|a|)        (the scaled max abs error of the exact check)

Memory: a model's weights stay in its file (:mod:`onnxopt.mapped`) and are fed to onnxruntime
as inputs, so a session holds none. The tensors are compared in chunks: mark a chunk as the
outputs of one session per model, run ``a``, drop its mapped pages, run ``b``, compare, drop
both outputs, go on. A chunk's outputs are sized to ``max_bytes`` (estimated from inferred
shapes, corrected by what the runs return), so the peak is about one model's weights plus two
chunks plus onnxruntime's working memory, whatever the number of tensors.

The *first* tensor over the threshold (in ``a``'s topological order) is where an exact rewrite
went wrong. The *jump* is where a lossy model lost its accuracy: the tensor whose noise-to-signal
ratio ``10^(−SQNR/10)`` grows most over its inputs' (the layer that added the most error; of
several that added about as much, the first).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt import provenance
from onnxopt.chunking import Side, chunks, estimate_bytes
from onnxopt.data import Feeds
from onnxopt.mapped import MappedModel

logger = logging.getLogger(__name__)

#: the default threshold on the scaled max abs error
THRESHOLD = 1e-3
#: a layer adding at least this share of the largest error growth can be the jump (the first)
JUMP_SHARE = 0.8


@dataclass
class Pair:
    """A tensor of ``a`` and the tensor of ``b`` that holds the same value."""

    a: str
    b: str
    node: str  # the producer in a
    op: str
    index: int  # the producer's topological index in a
    depth: int  # longest path from the graph inputs to the producer, in nodes
    how: str  # "name" | "provenance"
    inputs: tuple[str, ...] = ()  # the producer's input tensors in a
    est_bytes: int = 0


@dataclass
class _Stat:
    dot: float = 0.0
    aa: float = 0.0
    bb: float = 0.0
    dd: float = 0.0
    max_abs: float = 0.0
    max_ref: float = 0.0
    integer: bool = False
    mismatched: int = 0
    size: int = 0
    shape: list[int] = field(default_factory=list)
    note: str = ""

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            self.note = f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
            return
        self.shape, self.size = list(a.shape), self.size + a.size
        if a.dtype.kind != "f" or b.dtype.kind != "f":
            self.integer = True
            self.mismatched += int(np.count_nonzero(a != b))
            return
        dot, aa, bb, dd, max_abs, max_ref = _sums(a.ravel(), b.ravel())
        self.dot += dot
        self.aa += aa
        self.bb += bb
        self.dd += dd
        self.max_abs, self.max_ref = max(self.max_abs, max_abs), max(self.max_ref, max_ref)

    def row(self, p: Pair) -> dict[str, Any]:
        """The row of ``p``: SQNR is None when the tensors are identical (or not float)."""
        out: dict[str, Any] = {
            "tensor": p.a,
            "other": p.b,
            "node": p.node,
            "op": p.op,
            "index": p.index,
            "depth": p.depth,
            "match": p.how,
            "inputs": list(p.inputs),
            "shape": self.shape,
            "cosine": None,
            "sqnr_db": None,
            "max_abs": None,
            "error": None,
            "note": self.note,
        }
        if self.note or not self.size:
            out["note"] = self.note or "empty"
        elif self.integer:
            frac = self.mismatched / self.size
            out.update(error=frac, note=f"not float: {frac:.2%} of the values differ")
        else:
            den = math.sqrt(self.aa * self.bb)
            out["cosine"] = self.dot / den if den > 0 else (1.0 if self.dd == 0 else 0.0)
            if self.dd > 0 and self.aa > 0:
                out["sqnr_db"] = 10 * math.log10(self.aa / self.dd)
            elif self.dd > 0:
                out["note"] = "the reference is all zeros"
            out["max_abs"] = self.max_abs
            out["error"] = self.max_abs / max(1.0, self.max_ref)
        return out


#: elements per block of :func:`_sums` (its float64 buffers are reused, never reallocated)
_BLOCK = 1 << 16
_BUF = np.empty((4, _BLOCK), np.float64)


def _sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(Σab, Σa², Σb², Σ(a−b)², max|a−b|, max|a|) in float64, block by block, with numpy's
    own loops: a BLAS dot product spins up its thread pool, which on a busy machine costs
    a hundred times the arithmetic, and a large temporary per tensor costs page faults."""
    dot = aa = bb = dd = max_abs = max_ref = 0.0
    x, y, d, p = _BUF
    for i in range(0, a.size, _BLOCK):
        n = min(_BLOCK, a.size - i)
        bx, by, bd, bp = x[:n], y[:n], d[:n], p[:n]
        np.copyto(bx, a[i : i + n])
        np.copyto(by, b[i : i + n])
        dot += float(np.multiply(bx, by, out=bp).sum())
        aa += float(np.multiply(bx, bx, out=bp).sum())
        bb += float(np.multiply(by, by, out=bp).sum())
        np.subtract(bx, by, out=bd)
        dd += float(np.multiply(bd, bd, out=bp).sum())
        max_abs = max(max_abs, float(np.abs(bd, out=bd).max()))
        max_ref = max(max_ref, float(np.abs(bx, out=bx).max()))
    return dot, aa, bb, dd, max_abs, max_ref


@dataclass
class LayerReport:
    """The comparison: one row per matched tensor, in ``a``'s topological order.

    Attributes:
        rows: dicts with tensor, other, node, op, index, depth, match, shape, cosine,
            sqnr_db, max_abs, error, note.
        first_over: the row of the first tensor whose error passes ``threshold`` (None: none).
        jump: the row that added the most error (:func:`find_jump`; None: no error anywhere).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = THRESHOLD
    first_over: int | None = None
    jump: int | None = None
    tensors_a: int = 0
    tensors_b: int = 0
    chunks: int = 0
    runs: int = 0
    max_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a non-finite float becomes None)."""
        return _finite(asdict(self))


# ------------------------------------------------------------------------------------------------
# matching


def _topo(nodes: list[onnx.NodeProto]) -> tuple[list[int], list[int]]:
    """(a topological order of ``nodes``, each node's depth), stable on an already sorted list."""
    prod = {t: i for i, n in enumerate(nodes) for t in n.output if t}
    depth = [0] * len(nodes)
    order, state = [], [0] * len(nodes)
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, done = stack.pop()
            if done:
                state[i] = 2
                order.append(i)
                ins = [prod[t] for t in nodes[i].input if t in prod and prod[t] != i]
                depth[i] = 1 + max((depth[j] for j in ins), default=0)
                continue
            if state[i]:
                continue
            state[i] = 1
            stack.append((i, True))
            for t in reversed(nodes[i].input):
                j = prod.get(t)
                if j is not None and j != i and not state[j]:
                    stack.append((j, False))
    return order, depth


def match_tensors(a: onnx.ModelProto, b: onnx.ModelProto) -> list[Pair]:
    """The tensors of ``a`` that ``b`` also computes, in ``a``'s topological order."""
    a_nodes, b_nodes = list(a.graph.node), list(b.graph.node)
    consts = {t.name for t in a.graph.initializer} | {t.name for t in b.graph.initializer}
    order, depth = _topo(a_nodes)
    pos = {i: k for k, i in enumerate(order)}
    a_out: dict[str, tuple[int, int]] = {}  # tensor -> (node, output slot)
    for i, n in enumerate(a_nodes):
        if n.op_type != "Constant":
            for k, t in enumerate(n.output):
                if t and t not in consts:
                    a_out[t] = (i, k)
    by_origin: dict[str, list[int]] = {}
    for i, n in enumerate(a_nodes):
        for o in provenance.origins(n):
            by_origin.setdefault(o, []).append(i)
    b_out = {t for n in b_nodes for t in n.output if t}
    chosen: dict[str, tuple[str, str]] = {t: (t, "name") for t in a_out if t in b_out}
    for n in b_nodes:
        if n.op_type == "Constant":
            continue
        cands = {i for o in provenance.origins(n) for i in by_origin.get(o, [])}
        if not cands:
            continue
        last = max(cands, key=lambda i: pos[i])
        for k, tb in enumerate(n.output):
            if not tb or tb in a_out or k >= len(a_nodes[last].output):
                continue
            ta = a_nodes[last].output[k]
            if ta in a_out and ta not in b_out:
                chosen[ta] = (tb, "provenance")  # the last producer in b's order wins
    pairs = []
    for ta, (tb, how) in chosen.items():
        i, _ = a_out[ta]
        n = a_nodes[i]
        pairs.append(Pair(ta, tb, n.name, n.op_type, pos[i], depth[i], how, tuple(n.input)))
    pairs.sort(key=lambda p: (p.index, p.a))
    return pairs


def compare_layers(
    a: MappedModel,
    b: MappedModel,
    feeds: Feeds,
    *,
    threshold: float = THRESHOLD,
    max_bytes: int | None = None,
    threads: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> LayerReport:
    """Compare every tensor ``a`` and ``b`` both compute, chunk by chunk (module docstring).

    Args:
        a, b: the reference and the model under test (:func:`onnxopt.mapped.open_mapped`).
        feeds: the inputs (every run is used).
        threshold: the scaled max abs error above which a tensor counts as wrong.
        max_bytes: the chunk budget (both models' outputs); default: an eighth of the larger
            model's weights, at least 32 MiB.
        progress: ``(what, done, total)`` per chunk.
    """
    t0 = time.perf_counter()
    pairs = match_tensors(a.proto, b.proto)
    rep = LayerReport(threshold=threshold, runs=len(feeds))
    rep.tensors_a = sum(len(n.output) for n in a.proto.graph.node)
    rep.tensors_b = sum(len(n.output) for n in b.proto.graph.node)
    if not pairs or not len(feeds):
        rep.notes.append("no tensor in common" if not pairs else "no inputs")
        return rep
    rep.max_bytes = max_bytes or max(32 << 20, max(a.nbytes, b.nbytes) // 8)
    estimate_bytes(pairs, a, feeds.runs[0])
    stats = {p.a: _Stat() for p in pairs}
    sides = (Side(a, threads), Side(b, threads))
    todo, scale, done = list(pairs), 1.0, 0
    while todo:
        chunk = chunks(todo, rep.max_bytes, scale)[0]
        got = _run_chunk(chunk, sides, feeds, stats)
        est = sum(p.est_bytes for p in chunk)
        scale = max(scale, got / max(est, 1))
        todo = todo[len(chunk) :]
        rep.chunks += 1
        done += len(chunk)
        if progress is not None:
            progress("comparing tensors", done, len(pairs))
    if any(s.copied for s in sides):
        rep.notes.append("onnxruntime refused weights as inputs: they were copied (more memory)")
    rep.rows = [stats[p.a].row(p) for p in pairs]
    rep.first_over = next(
        (i for i, r in enumerate(rep.rows) if r["error"] is not None and r["error"] > threshold),
        None,
    )
    rep.jump = find_jump(rep.rows)
    rep.seconds = time.perf_counter() - t0
    return rep


def _run_chunk(
    chunk: list[Pair], sides: tuple[Side, Side], feeds: Feeds, stats: dict[str, _Stat]
) -> int:
    """Run both models on every run with the chunk's tensors as outputs; accumulate the
    statistics. Returns the largest bytes one model's outputs took on one run."""
    sa = sides[0].session([p.a for p in chunk])
    sb = sides[1].session([p.b for p in chunk])
    biggest = 0
    for run in feeds.runs:
        ya = sides[0].run(sa, run)
        yb = sides[1].run(sb, run)
        biggest = max(biggest, sum(v.nbytes for v in ya.values() if hasattr(v, "nbytes")))
        for p in chunk:
            stats[p.a].add(np.asarray(ya[p.a]), np.asarray(yb[p.b]))
        del ya, yb
    return biggest


def find_jump(rows: list[dict[str, Any]]) -> int | None:
    """The first row (in topological order) whose noise-to-signal ratio ``10^(−SQNR/10)`` grows
    over the largest of its producer's inputs' by at least ``JUMP_SHARE`` of the largest such
    growth anywhere (graph inputs, weights and identical tensors count as exact): the layer
    that added the most error, or the first of several that added about as much. None when no
    tensor has any error."""
    nsr = {r["tensor"]: _nsr(r["sqnr_db"]) for r in rows if r.get("error") is not None}
    gains = []
    for i, r in enumerate(rows):
        if r["tensor"] in nsr and r.get("cosine") is not None:
            before = max((nsr[t] for t in r.get("inputs", ()) if t in nsr), default=0.0)
            gains.append((i, nsr[r["tensor"]] - before))
    top = max((g for _, g in gains), default=0.0)
    if top <= 0.0:
        return None
    return next(i for i, g in gains if g >= JUMP_SHARE * top)


def _nsr(sqnr_db: float | None) -> float:
    return 0.0 if sqnr_db is None else 10 ** (-float(sqnr_db) / 10)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
