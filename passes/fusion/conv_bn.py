"""BatchNormalization folded into the neighbouring linear op.

With s = γ/√(σ²+ε) and t = β − μ·s (per channel), BN(y) = y·s + t. Then:

- Conv∘BN -> Conv:  W'[o] = W[o]·s[o],  b' = b·s + t   (ConvTranspose: the output channel is
  axis 1 of W within each group). A per-channel constant added or subtracted between the
  conv and the BN folds into the bias first: b' = (b ± c)·s + t.
- Gemm∘BN -> Gemm (2-D, channel = column):  B' columns scaled by s,  C' = β_g·C·s + t.
- MatMul∘BN -> MatMul + Add (2-D input):  W' = W·s (columns),  bias t.
- BN -> Conv (BN before Conv, no padding):  Conv(x·s + t) = Conv_{W·s[c]}(x) + Σ_{c,k} W[o,c,k]·t[c].
- BN -> Gemm (BN before Gemm on 2-D input):  (x·s + t)·B = x·(s∘B) + t·B.

Declines: training mode, non-constant parameters, weights shared with other nodes, padding
before the conv (padded zeros would not go through the BN), unknown ranks.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_empty_tensor
from onnxopt.passes.fusion._base import (
    CONV_OR_TRANSPOSE,
    FusionPass,
    const,
    conv_bias,
    conv_bias_reason,
    out_channels,
    rank,
    scale_out_channels,
    shared_const_reason,
    var,
)
from onnxopt.passes.fusion.bias_fold import per_channel
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

_BN_PARAMS = (Const("scale"), Const("bias"), Const("mean"), Const("var"))


def _bn_affine(m: Match) -> tuple[np.ndarray, np.ndarray]:
    bn = m.nodes["bn"]
    eps = float(bn.attrs.get("epsilon", 1e-5))
    gamma = m.values["scale"].astype(np.float64)
    beta = m.values["bias"].astype(np.float64)
    mean = m.values["mean"].astype(np.float64)
    var_ = m.values["var"].astype(np.float64)
    s = gamma / np.sqrt(var_ + eps)
    return s, beta - mean * s


def _bn_ok(bn: gs.Node) -> MatchResult:
    if int(bn.attrs.get("training_mode", 0)):
        return MatchResult.fail("BatchNormalization in training mode")
    if any(t.outputs for t in bn.outputs[1:]):
        return MatchResult.fail("BatchNormalization running-stat outputs are used")
    return MatchResult.success()


class ConvBn(Rule):
    """Conv / ConvTranspose followed by BatchNormalization, with or without a per-channel
    constant Add / Sub between them (PaddlePaddle writes a ConvTranspose's bias as an Add
    after it: PP-OCRv5's detector head is ``ConvTranspose -> Add -> BatchNormalization``, and
    ``fold-bias``, which would take the Add, runs after this pass)."""

    name: ClassVar[str] = "conv_bn"
    patterns = (
        Op("BatchNormalization", CONV_OR_TRANSPOSE, *_BN_PARAMS, name="bn", exact_arity=False),
        Op(
            "BatchNormalization",
            Op(("Add", "Sub"), CONV_OR_TRANSPOSE, Const("c"), name="shift"),
            *_BN_PARAMS,
            name="bn",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _bn_ok(m.nodes["bn"])
        if not res:
            return res
        conv = m.nodes["conv"]
        reason = shared_const_reason(m.tensors["w"], conv)
        if reason:
            return MatchResult.fail(reason)
        reason = conv_bias_reason(conv)
        if reason:
            return MatchResult.fail(reason)
        w = m.values["w"]
        out_ch = out_channels(conv, w)
        if m.values["scale"].size != out_ch:
            return MatchResult.fail(f"BN has {m.values['scale'].size} channels, conv {out_ch}")
        if "shift" in m.nodes and per_channel(m.values["c"], w.ndim, out_ch) is None:
            return MatchResult.fail(
                f"constant of shape {list(m.values['c'].shape)} between the conv and the BN "
                "is not per output channel"
            )
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        conv = m.nodes["conv"]
        w = m.values["w"]
        s, t = _bn_affine(m)
        b = conv_bias(conv, s.size)
        if "shift" in m.nodes:  # the constant folds into the bias first
            c = per_channel(m.values["c"], w.ndim, s.size)
            b = b + c if m.nodes["shift"].op == "Add" else b - c
        new = gs.Node(
            conv.op,
            conv.name,
            attrs=dict(conv.attrs),
            inputs=[
                m.tensors["x"],
                const(graph, f"{conv.name}_w_bn", scale_out_channels(conv, w, s).astype(w.dtype)),
                const(graph, f"{conv.name}_b_bn", (b * s + t).astype(w.dtype)),
            ],
            outputs=[var(graph, f"{conv.name}_bn_out", dtype=w.dtype)],
        )
        replace_root(graph, m, [new])


class GemmBn(Rule):
    """Gemm followed by BatchNormalization on its 2-D output (channel = column)."""

    name: ClassVar[str] = "gemm_bn"
    patterns = (
        Op(
            "BatchNormalization",
            Op("Gemm", Var("a"), Const("b"), name="gemm", exact_arity=False),
            *_BN_PARAMS,
            name="bn",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _bn_ok(m.nodes["bn"])
        if not res:
            return res
        gemm = m.nodes["gemm"]
        for t in gemm.inputs[1:]:
            if is_empty_tensor(t):
                continue
            if const_value(t) is None:
                return MatchResult.fail(f"Gemm input '{t.name}' is not a constant")
            reason = shared_const_reason(t, gemm)
            if reason:
                return MatchResult.fail(reason)
        b = m.values["b"]
        cols = b.shape[0] if int(gemm.attrs.get("transB", 0)) else b.shape[1]
        if m.values["scale"].size != cols:
            return MatchResult.fail("BN channels differ from Gemm columns")
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            c = const_value(gemm.inputs[2])
            if c.size not in (1, cols) or (c.ndim == 2 and c.shape[0] != 1):
                return MatchResult.fail("Gemm bias is not per-column")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        gemm = m.nodes["gemm"]
        s, t = _bn_affine(m)
        b = m.values["b"]
        trans_b = int(gemm.attrs.get("transB", 0))
        b2 = b * (s[:, None] if trans_b else s[None, :])
        beta = float(gemm.attrs.get("beta", 1.0))
        c = np.zeros(s.size)
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            c = np.broadcast_to(
                const_value(gemm.inputs[2]).astype(np.float64).reshape(-1), (s.size,)
            )
        c2 = beta * c * s + t
        attrs = dict(gemm.attrs)
        attrs["beta"] = 1.0
        new = gs.Node(
            "Gemm",
            gemm.name,
            attrs=attrs,
            inputs=[
                m.tensors["a"],
                const(graph, f"{gemm.name}_b_bn", b2.astype(b.dtype)),
                const(graph, f"{gemm.name}_c_bn", c2.astype(b.dtype)),
            ],
            outputs=[var(graph, f"{gemm.name}_bn_out", dtype=b.dtype)],
        )
        replace_root(graph, m, [new])


class MatMulBn(Rule):
    """MatMul (2-D input, constant 2-D weight) followed by BatchNormalization."""

    name: ClassVar[str] = "matmul_bn"
    patterns = (
        Op(
            "BatchNormalization",
            Op("MatMul", Var("a"), Const("w"), name="mm"),
            *_BN_PARAMS,
            name="bn",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _bn_ok(m.nodes["bn"])
        if not res:
            return res
        if rank(m.tensors["a"]) != 2 or m.values["w"].ndim != 2:
            return MatchResult.fail("MatMul input is not known to be 2-D")
        reason = shared_const_reason(m.tensors["w"], m.nodes["mm"])
        if reason:
            return MatchResult.fail(reason)
        if m.values["w"].shape[1] != m.values["scale"].size:
            return MatchResult.fail("BN channels differ from MatMul columns")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        mm = m.nodes["mm"]
        s, t = _bn_affine(m)
        w = m.values["w"]
        mid = var(graph, f"{mm.name}_bn_mm", dtype=w.dtype)
        n1 = gs.Node(
            "MatMul",
            mm.name,
            inputs=[
                m.tensors["a"],
                const(graph, f"{mm.name}_w_bn", (w * s[None, :]).astype(w.dtype)),
            ],
            outputs=[mid],
        )
        n2 = gs.Node(
            "Add",
            f"{mm.name}_bn_add",
            inputs=[mid, const(graph, f"{mm.name}_b_bn", t.astype(w.dtype))],
            outputs=[var(graph, f"{mm.name}_bn_out", dtype=w.dtype)],
        )
        replace_root(graph, m, [n1, n2])


def _zero_pads(conv: gs.Node) -> bool:
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return False
    return not any(int(p) for p in conv.attrs.get("pads", []))


class BnConv(Rule):
    """A BatchNormalization feeding a Conv (no padding, group 1): fold into the conv."""

    name: ClassVar[str] = "bn_conv"
    patterns = (
        Op(
            "Conv",
            Op("BatchNormalization", Var("x"), *_BN_PARAMS, name="bn", exact_arity=False),
            Const("w"),
            name="conv",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _bn_ok(m.nodes["bn"])
        if not res:
            return res
        conv = m.nodes["conv"]
        if not _zero_pads(conv):
            return MatchResult.fail("conv pads the BN output (padded zeros skip the BN)")
        if int(conv.attrs.get("group", 1)) != 1:
            return MatchResult.fail("grouped conv")
        reason = shared_const_reason(m.tensors["w"], conv)
        if reason:
            return MatchResult.fail(reason)
        reason = conv_bias_reason(conv)
        if reason:
            return MatchResult.fail(reason)
        if m.values["w"].shape[1] != m.values["scale"].size:
            return MatchResult.fail("BN channels differ from conv input channels")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        conv = m.nodes["conv"]
        s, t = _bn_affine(m)
        w = m.values["w"]
        w64 = w.astype(np.float64)
        shape = (1, -1, *([1] * (w.ndim - 2)))
        w2 = w64 * s.reshape(shape)
        b = conv_bias(conv, w.shape[0])
        b2 = b + (w64 * t.reshape(shape)).reshape(w.shape[0], -1).sum(axis=1)
        new = gs.Node(
            "Conv",
            conv.name,
            attrs=dict(conv.attrs),
            inputs=[
                m.tensors["x"],
                const(graph, f"{conv.name}_w_bn", w2.astype(w.dtype)),
                const(graph, f"{conv.name}_b_bn", b2.astype(w.dtype)),
            ],
            outputs=[var(graph, f"{conv.name}_bn_out", dtype=w.dtype)],
        )
        replace_root(graph, m, [new])


class BnGemm(Rule):
    """A BatchNormalization on a 2-D input feeding a Gemm's A input (transA=0)."""

    name: ClassVar[str] = "bn_gemm"
    patterns = (
        Op(
            "Gemm",
            Op("BatchNormalization", Var("x"), *_BN_PARAMS, name="bn", exact_arity=False),
            Const("b"),
            name="gemm",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _bn_ok(m.nodes["bn"])
        if not res:
            return res
        gemm = m.nodes["gemm"]
        if int(gemm.attrs.get("transA", 0)):
            return MatchResult.fail("Gemm has transA=1")
        reason = shared_const_reason(m.tensors["b"], gemm)
        if reason:
            return MatchResult.fail(reason)
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            if const_value(gemm.inputs[2]) is None:
                return MatchResult.fail("Gemm bias is not a constant")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        gemm = m.nodes["gemm"]
        s, t = _bn_affine(m)
        b = m.values["b"].astype(np.float64)
        bk = b.T if int(gemm.attrs.get("transB", 0)) else b  # [K, N]
        alpha = float(gemm.attrs.get("alpha", 1.0))
        beta = float(gemm.attrs.get("beta", 1.0))
        b2k = bk * s[:, None]
        c = np.zeros(bk.shape[1])
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            c = const_value(gemm.inputs[2]).astype(np.float64)
        c2 = beta * c + alpha * (t @ bk)
        b2 = b2k.T if int(gemm.attrs.get("transB", 0)) else b2k
        dt = m.values["b"].dtype
        attrs = dict(gemm.attrs)
        attrs["beta"] = 1.0
        new = gs.Node(
            "Gemm",
            gemm.name,
            attrs=attrs,
            inputs=[
                m.tensors["x"],
                const(graph, f"{gemm.name}_b_bn", b2.astype(dt)),
                const(graph, f"{gemm.name}_c_bn", np.asarray(c2).astype(dt)),
            ],
            outputs=[var(graph, f"{gemm.name}_bn_out", dtype=dt)],
        )
        replace_root(graph, m, [new])


class FoldBatchNorm(FusionPass):
    """Fold BatchNormalization into a neighbouring Conv / ConvTranspose / Gemm / MatMul."""

    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "BatchNormalization folded into Conv/ConvTranspose/Gemm/MatMul"

    def rules(self) -> list[Rule]:
        return [ConvBn(), GemmBn(), MatMulBn(), BnConv(), BnGemm()]
