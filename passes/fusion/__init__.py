"""Fusion passes: one family per module, each an exact pass over the pattern helper.

``PASSES`` is the run order: layout and arithmetic clean-ups first (they expose patterns),
then linear-op folds, then activation / normalisation fusions, then the affines left
between Convs as depthwise Convs (after the folds and the activations), then the flush of weights
too small to matter (after the folds, which make new weights), then the com.microsoft contrib
fusions (which only run with ``--target onnxruntime``).
"""

from __future__ import annotations

from onnxopt.passes.fusion.activations import FuseActivations
from onnxopt.passes.fusion.affine_conv import AffineToConv
from onnxopt.passes.fusion.arith_noop import RemoveArithNoop
from onnxopt.passes.fusion.bias_fold import FoldBias
from onnxopt.passes.fusion.conv_bn import FoldBatchNorm
from onnxopt.passes.fusion.gelu import FuseGelu
from onnxopt.passes.fusion.gemm import FuseGemm
from onnxopt.passes.fusion.layernorm import FuseLayerNorm
from onnxopt.passes.fusion.layout import FuseLayout
from onnxopt.passes.fusion.ort_attention import OrtFuseAttention
from onnxopt.passes.fusion.ort_gelu import OrtFuseGelu
from onnxopt.passes.fusion.ort_layernorm import OrtFuseSkipLayerNorm
from onnxopt.passes.fusion.ort_matmul import OrtFuseMatMul
from onnxopt.passes.fusion.pad_fold import FoldPad
from onnxopt.passes.fusion.tiny_weights import FlushTinyWeights

PASSES = [
    RemoveArithNoop,
    FuseLayout,
    FoldPad,
    FoldBatchNorm,
    FoldBias,
    FuseGemm,
    FuseLayerNorm,
    FuseGelu,
    FuseActivations,
    AffineToConv,
    FlushTinyWeights,
    OrtFuseAttention,
    OrtFuseSkipLayerNorm,
    OrtFuseGelu,
    OrtFuseMatMul,
]

__all__ = [p.__name__ for p in PASSES] + ["PASSES"]
