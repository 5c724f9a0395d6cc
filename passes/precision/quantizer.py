"""The layers of ``quantize-int4`` quantized one input tensor at a time: Hessians in bounded
memory, the algorithm per layer, each layer's error, and the sensitive layers.

For the layers reading one input tensor ``X`` (Q, K and V share it) the calibration runs give
``H = XᵀX``, summed separately over the even and the odd runs (:class:`Hessian`), a chunk of
input tensors at a time (:mod:`.probe`; the chunk's Hessians are dropped once its layers are
done). Each layer's error is ``e = ‖X(W − Ŵ)‖ / ‖XW‖`` on all runs (:func:`.gptq.relative_error`);
embedding tables, which have no inputs to weigh, get ``‖W − Ŵ‖ / ‖W‖``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import Int4Config
from .gptq import gptq_generalizes, inverse_cholesky, quantize_gptq, relative_error
from .layers import Layer
from .nbits import Quantized, quantize_hqq, quantize_rtn
from .probe import Probe

#: runs the per-layer errors (report, sensitivity) read when the algorithm itself is data-free
DATA_FREE_RUNS = 8


@dataclass
class Hessian:
    """``XᵀX`` of one input tensor, summed separately over the even and the odd calibration
    runs (GPTQ fits on one half and is checked on the other), with their row counts."""

    even: np.ndarray
    odd: np.ndarray
    rows_even: int = 0
    rows_odd: int = 0

    @property
    def rows(self) -> int:
        return self.rows_even + self.rows_odd

    def full(self) -> np.ndarray:
        return (self.even + self.odd) / max(self.rows, 1)

    def halves(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(fit, check) means, or None when a half has no rows."""
        if not self.rows_even or not self.rows_odd:
            return None
        return self.even / self.rows_even, self.odd / self.rows_odd


def hessians(probe: Probe, names: list[str], dims: dict[str, int]) -> dict[str, Hessian]:
    """The :class:`Hessian` of each named input tensor over the calibration runs (float32:
    one BLAS product per run)."""
    acc = {
        n: Hessian(np.zeros((dims[n],) * 2, np.float32), np.zeros((dims[n],) * 2, np.float32))
        for n in names
    }
    for i, values in enumerate(probe.stream(names)):
        for n, v in values.items():
            x = np.asarray(v, np.float32).reshape(-1, dims[n])
            h = acc[n]
            if i % 2:
                h.odd += x.T @ x
                h.rows_odd += x.shape[0]
            else:
                h.even += x.T @ x
                h.rows_even += x.shape[0]
    return acc


@dataclass
class Done:
    """One layer quantized: its codes, its error, and its error at ``sensitive_bits``."""

    layer: Layer
    q: Quantized
    error: float
    error_high: float


@dataclass
class Quantizing:
    """One run of ``quantize-int4``'s quantizer over a model's layers.

    Attributes:
        config: the pass's options.
        notes: what the report should say.
        fallback: the layers where GPTQ lost to the data-free quantizer on held-out runs.
    """

    config: Int4Config
    notes: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        c = self.config
        return c.calib_runs if c.algo == "gptq" else min(c.calib_runs, DATA_FREE_RUNS)

    def all(
        self, layers: list[Layer], probe: Probe, progress: Callable[[int, int], None]
    ) -> list[Done]:
        """Every layer, in graph order."""
        by_input: dict[str, list[Layer]] = {}
        out = [self.one(x, None, None) for x in layers if x.kind == "gather"]
        for x in layers:
            if x.kind == "matmul":
                by_input.setdefault(x.x, []).append(x)
        dims = {name: group[0].weight.shape[0] for name, group in by_input.items()}
        extra = {name: 12 * k * k for name, k in dims.items()}  # two sums and their mean
        chunks = probe.chunks(list(by_input), extra)
        for i, chunk in enumerate(chunks):
            hs = hessians(probe, chunk, dims)
            self._few_rows(hs, dims)
            for name in chunk:
                out += self.group(by_input[name], hs[name])
            del hs
            progress(i + 1, len(chunks))
        order = {x.name: i for i, x in enumerate(layers)}
        return sorted(out, key=lambda d: order[d.layer.name])

    def group(self, layers: list[Layer], hess: Hessian) -> list[Done]:
        """The layers reading one input tensor (they share GPTQ's factors)."""
        c, h = self.config, hess.full()
        if c.algo != "gptq":
            return [self.one(x, self.data_free(x.weight, 4), h) for x in layers]
        halves = hess.halves()
        fit = inverse_cholesky(halves[0], c.damp) if halves else None
        full: np.ndarray | None = None
        out = []
        for x in layers:
            if halves is not None and not gptq_generalizes(x.weight, fit, halves[1], self._q):
                self.fallback.append(x.name)
                out.append(self.one(x, self.data_free(x.weight, 4), h))
                continue
            full = inverse_cholesky(h, c.damp) if full is None else full
            out.append(self.one(x, self._q(x.weight, full), h))
        return out

    def _q(self, w: np.ndarray, u: np.ndarray | None) -> Quantized:
        """GPTQ for the factor ``u``, or the data-free quantizer when ``u`` is None."""
        c = self.config
        if u is None:
            return self.data_free(w, 4)
        return quantize_gptq(w, None, 4, c.block_size, c.symmetric, c.damp, u=u)

    def data_free(self, w: np.ndarray, bits: int) -> Quantized:
        """RTN, or the HQQ-style search unless the algorithm is RTN or it is symmetric."""
        c = self.config
        if c.algo != "rtn" and not c.symmetric:
            return quantize_hqq(w, bits, c.block_size, c.hqq_iters)
        return quantize_rtn(w, bits, c.block_size, c.symmetric)

    def one(self, layer: Layer, q: Quantized | None, h: np.ndarray | None) -> Done:
        """``layer`` quantized as ``q`` with its errors (a table: data-free)."""
        c, w = self.config, layer.weight
        if layer.kind == "gather":
            q = self.data_free(w, c.embedding_bits)
            return Done(layer, q, relative_error(w, q.dequantize(), None), 0.0)
        q8 = quantize_rtn(w, c.sensitive_bits, c.block_size, c.symmetric)
        err = relative_error(w, q.dequantize(), h)
        return Done(layer, q, err, relative_error(w, q8.dequantize(), h))

    def _few_rows(self, hs: dict[str, Hessian], dims: dict[str, int]) -> None:
        few = [n for n, h in hs.items() if h.rows < dims[n]]
        if few and self.config.algo == "gptq":
            self.notes.append(
                f"gptq: {hs[few[0]].rows} calibration rows for K={dims[few[0]]} "
                f"('{few[0]}'{f' and {len(few) - 1} more' if len(few) > 1 else ''}): "
                "the Hessian is singular; give more --data"
            )

    def sensitive(self, done: list[Done]) -> set[str]:
        """The MatMul layers whose 4-bit error exceeds ``sensitivity`` times the median
        layer's, worst first, at most ``max_sensitive`` of them."""
        c = self.config
        ranked = [d for d in done if d.layer.kind == "matmul"]
        if c.sensitive_bits == 4 or c.max_sensitive <= 0 or len(ranked) < 2:
            return set()
        limit = c.sensitivity * float(np.median([d.error for d in ranked]))
        worst = sorted(ranked, key=lambda d: -d.error)
        most = int(np.floor(c.max_sensitive * len(ranked)))
        return {d.layer.name for d in worst[:most] if d.error > limit}

    def fallback_note(self, total: int) -> str:
        c, names = self.config, self.fallback
        more = " …" if len(names) > 4 else ""
        return (
            f"gptq kept on {total - len(names)} of {total} layers; {len(names)} use "
            f"{'rtn' if c.symmetric else 'hqq'} instead, which beat GPTQ on held-out "
            f"calibration runs: {', '.join(names[:4])}{more}"
        )
