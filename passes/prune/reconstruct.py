"""Reconstruction: refit each consumer of pruned channels on calibration data, no training.

For a consumer layer with pruned inputs ``X'`` (im2col patches for a Conv, rows for Gemm /
MatMul) and the original layer's outputs ``Y`` (restricted to the layer's kept output channels),
solve a ridge least squares pulled toward the sliced weights ``Θ₀ = [W₀ᵀ; b₀]``:

    A = [X', 1],   Θ = Θ₀ + (AᵀA + λI)⁻¹ Aᵀ (Y − A Θ₀),   λ = α · mean(diag(AᵀA))

so the layer reproduces what the original layer computed, from the channels it still has. When
the pruned channels carried no signal, ``Y = A Θ₀`` already and the refit returns ``Θ₀``.

A BatchNormalization downstream of a change has its statistics re-estimated so its output
distribution matches the original's: with batch statistics ``m, s`` (original input) and
``m', s'`` (pruned input),  ``σ'' = σ·s'/s``,  ``μ' = m' − (m − μ)·s'/s``.

Layers are refit in waves: every layer whose upstream refits are done is fitted from one run of
the partially refitted model, so later layers see the corrected activations.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.data import Feeds
from onnxopt.graph import (
    const_value,
    is_empty_tensor,
    producer,
    to_graph,
    to_model,
    unique_name,
    unused_initializers,
)

logger = logging.getLogger(__name__)


@dataclass
class Step:
    node: str
    kind: str  # "conv" | "gemm" | "matmul" | "bn"
    upstream: set[str] = field(default_factory=set)
    rows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (X', Y) per run
    stats: list[np.ndarray] = field(default_factory=list)  # BN: [sum, sumsq, count] orig


def run_with_outputs(
    model: onnx.ModelProto,
    feeds: Feeds,
    names: list[str],
    known: list[dict[str, np.ndarray]] | None = None,
):
    """Yield {name: array} per run for intermediate tensors ``names``.

    Only the nodes those tensors need are kept (earlier layers' refits do not pay for the whole
    model), and a tensor whose per-run values are in ``known`` is fed rather than computed, so
    the backward walk stops there.
    """
    from onnxopt.runner import Runner

    graph_inputs = {i.name for i in model.graph.input}
    have = set(known[0]) - graph_inputs if known else set()
    need, feed, keep = set(), set(), []
    for n in names:
        (feed if n in have or n in graph_inputs else need).add(n)
    for node in reversed(model.graph.node):
        if not any(o in need for o in node.output):
            continue
        keep.append(node)
        feed.difference_update(node.output)  # computed here anyway (another output is needed)
        reads = [i for i in node.input if i]
        for a in node.attribute:  # subgraphs read outer tensors by name
            if a.g is not None:
                reads += [i for n in a.g.node for i in n.input if i]
        for i in reads:
            (feed if i in have else need).add(i)
    m = onnx.ModelProto(ir_version=model.ir_version)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.node.extend(reversed(keep))
    g.initializer.extend(t for t in model.graph.initializer if t.name in need)
    g.input.extend(i for i in model.graph.input if i.name in need)
    fed = sorted(feed - graph_inputs)
    for n in fed:
        v = known[0][n]
        g.input.append(
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), None
            )
        )
    computed = [n for n in names if n not in feed]
    g.output.extend(onnx.ValueInfoProto(name=n) for n in computed)
    sess = Runner().session(m) if computed else None
    del m, g  # the session holds its own copy of the weights: do not keep a second one alive
    inputs = {i.name for i in sess.get_inputs()} if sess is not None else set()
    for r, run in enumerate(feeds.runs):
        vals = {n: known[r][n] for n in names if n in have} if known else {}
        vals.update({n: run[n] for n in names if n in graph_inputs})
        if sess is not None:
            given = {k: v for k, v in run.items() if k in inputs}
            given.update({n: known[r][n] for n in fed if n in inputs})
            vals.update(zip(computed, sess.run(computed, given), strict=True))
        yield {n: vals[n] for n in names}


def _conv_ok(node: gs.Node) -> bool:
    w = const_value(node.inputs[1])
    return (
        w is not None
        and w.ndim == 4
        and int(node.attrs.get("group", 1)) == 1
        and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    )


def _positions(name: str, run: int, shape: tuple, n_rows: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 7919 * run)
    total = int(np.prod(shape))
    if total <= n_rows:
        return np.arange(total)
    return np.sort(rng.choice(total, n_rows, replace=False))


def _conv_rows(node: gs.Node, x: np.ndarray, y_shape: tuple, pos: np.ndarray) -> np.ndarray:
    """im2col patches of ``x`` at output positions ``pos`` (flat over N, H_out, W_out)."""
    w = const_value(node.inputs[1])
    kh, kw = w.shape[2:]
    sh, sw = node.attrs.get("strides", [1, 1])
    dh, dw = node.attrs.get("dilations", [1, 1])
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, i, j = np.unravel_index(pos, (y_shape[0], y_shape[2], y_shape[3]))
    cols = [xp[n, :, i * sh + a * dh, j * sw + b * dw] for a in range(kh) for b in range(kw)]
    return np.stack(cols, axis=2).reshape(len(pos), -1)


def _ridge(a: np.ndarray, y: np.ndarray, theta0: np.ndarray, alpha: float) -> np.ndarray:
    a = a.astype(np.float64)
    g = a.T @ a
    lam = alpha * max(float(np.mean(np.diag(g))), 1e-12)
    rhs = a.T @ (y.astype(np.float64) - a @ theta0)
    return theta0 + np.linalg.solve(g + lam * np.eye(g.shape[0]), rhs)


class Reconstructor:
    """Refit consumers and re-estimate BN statistics of ``pruned`` against ``base``."""

    def __init__(
        self,
        base: onnx.ModelProto,
        pruned: onnx.ModelProto,
        feeds: Feeds,
        kept_index: dict,
        *,
        alpha: float = 1e-3,
        max_rows: int = 8192,
    ) -> None:
        self.base, self.feeds, self.kept_index = base, feeds, kept_index
        self.graph = to_graph(pruned)
        self.like = pruned
        self.alpha = alpha
        self.rows_per_run = max(16, max_rows // max(1, len(feeds.runs)))
        self.nodes = {n.name: n for n in self.graph.nodes}
        self.notes: list[str] = []

    def steps(self) -> list[Step]:
        changed = {name for (name, _idx) in self.kept_index}
        steps: list[Step] = []
        down: set[str] = set()
        for node in self.graph.nodes:  # topological
            ups = {producer(t).name for t in node.inputs if producer(t) is not None}
            touched = node.name in changed or bool(ups & down)
            if touched:
                down.add(node.name)
            ins_sliced = any(
                a != self._out_axis(node) for a in self.kept_index.get((node.name, 1), {})
            )
            kind = None
            if node.op == "Conv" and ins_sliced:
                kind = "conv" if _conv_ok(node) else None
                if kind is None:
                    self.notes.append(
                        f"reconstruct: Conv '{node.name}' (grouped, non-2-D or "
                        f"auto_pad) left as sliced"
                    )
            elif node.op == "Gemm" and ins_sliced and not int(node.attrs.get("transA", 0)):
                kind = "gemm"
            elif node.op == "MatMul" and ins_sliced and const_value(node.inputs[1]) is not None:
                kind = "matmul"
            elif node.op == "BatchNormalization" and bool(ups & down):
                kind = "bn"
            if kind:
                steps.append(Step(node.name, kind))
        names = {s.node for s in steps}
        anc: dict[str, set[str]] = {}
        for node in self.graph.nodes:
            a: set[str] = set()
            for t in node.inputs:
                p = producer(t)
                if p is not None:
                    a |= anc.get(p.name, set())
                    if p.name in names:
                        a.add(p.name)
            anc[node.name] = a
        for s in steps:
            s.upstream = anc[s.node]
        return steps

    def _out_axis(self, node: gs.Node) -> int:
        if node.op == "Gemm":
            return 0 if int(node.attrs.get("transB", 0)) else 1
        return 1 if node.op == "MatMul" else 0

    def _out_keep(self, node: gs.Node) -> np.ndarray | None:
        return self.kept_index.get((node.name, 1), {}).get(self._out_axis(node))

    def run(self) -> tuple[onnx.ModelProto, list[str], int]:
        steps = self.steps()
        if not steps:
            return self.like, self.notes, 0
        self._collect_targets(steps)
        done: set[str] = set()
        pending = list(steps)
        known: list[dict[str, np.ndarray]] | None = None
        model = to_model(self.graph.copy(), like=self.like)
        while pending:
            wave = [s for s in pending if s.upstream <= done]
            known = self._fit_wave(model, wave, known)
            self._patch(model, wave)
            done |= {s.node for s in wave}
            pending = [s for s in pending if s.node not in done]
        fits = sum(s.kind != "bn" for s in steps)
        bns = len(steps) - fits
        self.notes.append(
            f"reconstruct: refit {fits} layer(s) and re-estimated {bns} "
            f"BatchNormalization(s) on {self.feeds.num_samples} sample(s)"
        )
        # the patched export is the result: drop the weights the refits replaced
        gone = set(unused_initializers(model.graph))
        keep = [t for t in model.graph.initializer if t.name not in gone]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        return model, self.notes, fits

    def _const(self, base: str, values: np.ndarray) -> gs.Constant:
        """A new constant under a fresh name (a weight shared by two refit layers gets two)."""
        return gs.Constant(unique_name(self.graph, base), values)

    def _patch(self, model: onnx.ModelProto, wave: list[Step]) -> None:
        """Write the wave's new constants into ``model`` (cheaper than a full export)."""
        from onnx import numpy_helper

        protos = {n.name: n for n in model.graph.node}
        have = {t.name for t in model.graph.initializer}
        for s in wave:
            node, proto = self.nodes[s.node], protos[s.node]
            del proto.input[:]
            proto.input.extend(t.name for t in node.inputs)
            for t in node.inputs:
                if isinstance(t, gs.Constant) and t.name not in have:
                    model.graph.initializer.append(numpy_helper.from_array(t.values, t.name))
                    have.add(t.name)

    # ---------------------------------------------------------------- original targets
    def _collect_targets(self, steps: list[Step]) -> None:
        names, base_nodes = [], {n.name: n for n in self.base.graph.node}
        for s in steps:
            bn = base_nodes[s.node]
            names.append(bn.input[0] if s.kind == "bn" else bn.output[0])
        for r, vals in enumerate(run_with_outputs(self.base, self.feeds, sorted(set(names)))):
            for s, name in zip(steps, names, strict=True):
                y = vals[name]
                node = self.nodes[s.node]
                if s.kind == "bn":
                    keep = self.kept_index.get((s.node, 1), {}).get(0)
                    y = y if keep is None else y[:, keep]
                    moved = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1).astype(np.float64)
                    st = np.stack(
                        [moved.sum(1), (moved**2).sum(1), np.full(moved.shape[0], moved.shape[1])]
                    )
                    s.stats.append(st)
                    continue
                keep = self._out_keep(node)
                if s.kind == "conv":
                    yt = np.moveaxis(y, 1, -1)  # N, H, W, C
                    pos = _positions(s.node, r, yt.shape[:3], self.rows_per_run)
                    rows = yt.reshape(-1, yt.shape[-1])[pos]
                else:
                    flat = y.reshape(-1, y.shape[-1])
                    pos = _positions(s.node, r, (flat.shape[0],), self.rows_per_run)
                    rows = flat[pos]
                rows = rows if keep is None else rows[:, keep]
                s.rows.append((pos, rows))

    # ---------------------------------------------------------------- fits
    def _cut(self, model: onnx.ModelProto, wave: list[Step]) -> list[str]:
        """Tensors this wave's refits cannot change that later layers may read: produced by
        the refit nodes' ancestors A (or graph inputs) and read by a node outside A. The next
        wave feeds them instead of recomputing everything from the graph inputs (linear,
        not quadratic, in the number of waves)."""
        producers = {o: n for n in model.graph.node for o in n.output}
        refit = {s.node for s in wave}
        ancestors: set[str] = set()
        stack = [i for n in model.graph.node if n.name in refit for i in n.input if i]
        while stack:
            t = stack.pop()
            p = producers.get(t)
            if p is None or p.name in ancestors:
                continue
            ancestors.add(p.name)
            stack.extend(i for i in p.input if i)
        inits = {t.name for t in model.graph.initializer}
        cut = set()
        for n in model.graph.node:
            if n.name in ancestors:
                continue
            for i in n.input:
                p = producers.get(i)
                if i and p is not None and p.name in ancestors and i not in inits:
                    cut.add(i)
        return sorted(cut)

    def _fit_wave(
        self, model: onnx.ModelProto, wave: list[Step], known: list[dict[str, np.ndarray]] | None
    ) -> list[dict[str, np.ndarray]]:
        """Fit the wave's layers; returns the per-run cut tensors for the next wave."""
        names = sorted({self.nodes[s.node].inputs[0].name for s in wave})
        cut = self._cut(model, wave)
        xs: dict[str, list] = {s.node: [] for s in wave}
        carried: list[dict[str, np.ndarray]] = []
        for r, vals in enumerate(
            run_with_outputs(model, self.feeds, sorted(set(names) | set(cut)), known)
        ):
            carried.append({n: vals[n] for n in cut})
            for s in wave:
                node = self.nodes[s.node]
                x = vals[node.inputs[0].name]
                if s.kind == "bn":
                    moved = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)
                    xs[s.node].append(
                        np.stack(
                            [
                                moved.sum(1),
                                (moved**2).sum(1),
                                np.full(moved.shape[0], moved.shape[1]),
                            ]
                        )
                    )
                elif s.kind == "conv":
                    pos, y = s.rows[r]
                    y_shape = (x.shape[0], y.shape[1]) + self._conv_out_hw(node, x)
                    xs[s.node].append(_conv_rows(node, x, y_shape, pos))
                else:
                    pos, _ = s.rows[r]
                    xs[s.node].append(x.reshape(-1, x.shape[-1])[pos])
        for s in wave:
            if s.kind == "bn":
                self._fit_bn(s, xs[s.node])
            else:
                self._fit_linear(
                    s, np.concatenate(xs[s.node]), np.concatenate([y for _, y in s.rows])
                )
        return carried

    def _conv_out_hw(self, node: gs.Node, x: np.ndarray) -> tuple[int, int]:
        w = const_value(node.inputs[1])
        sh, sw = node.attrs.get("strides", [1, 1])
        dh, dw = node.attrs.get("dilations", [1, 1])
        p = node.attrs.get("pads", [0, 0, 0, 0])
        ho = (x.shape[2] + p[0] + p[2] - dh * (w.shape[2] - 1) - 1) // sh + 1
        wo = (x.shape[3] + p[1] + p[3] - dw * (w.shape[3] - 1) - 1) // sw + 1
        return ho, wo

    def _fit_linear(self, s: Step, x: np.ndarray, y: np.ndarray) -> None:
        node = self.nodes[s.node]
        w = const_value(node.inputs[1]).astype(np.float64)
        dtype = const_value(node.inputs[1]).dtype
        if s.kind == "conv":
            w0 = w.reshape(w.shape[0], -1).T
            bias_idx, scale, beta = 2, 1.0, 1.0
        elif s.kind == "gemm":
            trans = int(node.attrs.get("transB", 0))
            scale = float(node.attrs.get("alpha", 1.0))
            beta = float(node.attrs.get("beta", 1.0))
            w0 = (w.T if trans else w) * scale
            bias_idx = 2
        else:
            w0, bias_idx, scale, beta = w, None, 1.0, 1.0
        cols = w0.shape[1]
        has_b = (
            bias_idx is not None
            and len(node.inputs) > bias_idx
            and not is_empty_tensor(node.inputs[bias_idx])
        )
        b_arr = const_value(node.inputs[bias_idx]) if has_b else None
        if has_b and (b_arr is None or b_arr.size != cols):
            bias_idx = None  # a broadcast or computed C: fit the weight only
        if bias_idx is not None:
            b0 = (b_arr.reshape(-1).astype(np.float64) * beta) if has_b else np.zeros(cols)
            a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
            theta = _ridge(a, y, np.vstack([w0, b0[None, :]]), self.alpha)
            w_new, b_new = theta[:-1], theta[-1] / beta
        else:
            w_new, b_new = _ridge(x, y, w0, self.alpha), None
        if s.kind == "conv":
            w_out = w_new.T.reshape(w.shape)
        elif s.kind == "gemm":
            w_out = (w_new.T if int(node.attrs.get("transB", 0)) else w_new) / scale
        else:
            w_out = w_new
        node.inputs[1] = self._const(node.inputs[1].name + "_refit", w_out.astype(dtype))
        if b_new is not None:
            shape = b_arr.shape if b_arr is not None else (cols,)
            name = (node.inputs[bias_idx].name if has_b else node.name + "_bias") + "_refit"
            const = self._const(name, b_new.reshape(shape).astype(dtype))
            while len(node.inputs) <= bias_idx:
                node.inputs.append(gs.Variable(""))
            node.inputs[bias_idx] = const

    def _fit_bn(self, s: Step, pruned_stats: list[np.ndarray]) -> None:
        node = self.nodes[s.node]
        o, p = np.sum(s.stats, axis=0), np.sum(pruned_stats, axis=0)
        m, mp = o[0] / o[2], p[0] / p[2]
        sd = np.sqrt(np.maximum(o[1] / o[2] - m**2, 1e-12))
        sdp = np.sqrt(np.maximum(p[1] / p[2] - mp**2, 1e-12))
        mu = const_value(node.inputs[3]).astype(np.float64)
        var = const_value(node.inputs[4]).astype(np.float64)
        eps = float(node.attrs.get("epsilon", 1e-5))
        ratio = sdp / sd
        mu_new = mp - (m - mu) * ratio
        var_new = np.maximum((var + eps) * ratio**2 - eps, 1e-12)
        dtype = const_value(node.inputs[3]).dtype
        node.inputs[3] = self._const(node.inputs[3].name + "_reest", mu_new.astype(dtype))
        node.inputs[4] = self._const(node.inputs[4].name + "_reest", var_new.astype(dtype))
