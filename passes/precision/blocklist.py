"""The ops ``convert-fp16`` / ``convert-bf16`` keep in float32 by default, each with the reason.

This is the one list (the passes, the docs and the report read it from here). A user extends it
with ``block_ops`` and shortens it with ``allow_ops`` (for a runtime whose half-precision
kernels accumulate in float32). Beyond the list the passes keep in float32:

- the nodes whose tensors leave the half type's range on the calibration data (measured);
- constants that half precision cannot hold (beyond its range, or mostly below its smallest
  normal number, such as LayerNorm's ε = 1e-12);
- arithmetic on integers cast to float (shape and index computations);
- ops without a schema (custom domains, local functions) and sequence-typed nodes;
- what the pipeline's bisection finds (the remaining failures).
"""

from __future__ import annotations

_ACCUMULATE = (
    "accumulates over the reduced axes: the running sum overflows float16's 65,504 long before "
    "the result does, and a half-precision accumulator drops the small terms"
)
_RANDOM = "random: its output dtype is an attribute and its sampling is specified in float32"

#: op type -> why it stays float32 by default
BLOCK_LIST: dict[str, str] = {
    "ReduceMean": _ACCUMULATE,
    "ReduceSum": _ACCUMULATE,
    "ReduceL1": _ACCUMULATE,
    "ReduceLogSum": _ACCUMULATE,
    "ReduceProd": "a product of many terms overflows or underflows half precision",
    "ReduceSumSquare": "squares before summing: overflows float16 once |x| > 256",
    "ReduceL2": "squares before summing: overflows float16 once |x| > 256",
    "ReduceLogSumExp": "exponentiates before summing: overflows float16 above x = 11.09",
    "CumSum": "a running sum: overflows and drops small terms in half precision",
    "Pow": "x² (LayerNorm's variance) overflows float16 once |x| > 256",
    "Exp": "overflows float16 above x = 11.09",
    "LpNormalization": "sums squares: overflows float16 once |x| > 256",
    "GlobalLpPool": "sums powers over the whole map: overflows half precision",
    "MeanVarianceNormalization": _ACCUMULATE,
    "Resize": "its scales input is float32 by its schema, and its coordinate transform needs "
    "float32 precision on large images",
    "Upsample": "its scales input is float32 by its schema",
    "Range": "start + i·delta loses integer precision above 2,048 in float16 (index arithmetic)",
    "RandomNormal": _RANDOM,
    "RandomUniform": _RANDOM,
    "RandomNormalLike": _RANDOM,
    "RandomUniformLike": _RANDOM,
    "Bernoulli": _RANDOM,
    "Multinomial": _RANDOM,
    "TopK": "values tied by rounding change which indices are selected",
    "NonMaxSuppression": "box coordinates and IoU thresholds lose precision",
    "RoiAlign": "sampling coordinates lose precision on large feature maps",
    "Det": "a determinant overflows or underflows half precision",
    "DFT": "sums over the whole signal",
    "STFT": "sums over each window of the signal",
}

#: control flow: the node keeps float32 at its own inputs and outputs; its bodies are converted
#: inside, with Casts at the body's boundary (so every branch and iteration agrees on types)
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def blocked(op_type: str, block_ops: tuple[str, ...], allow_ops: tuple[str, ...]) -> str:
    """Why ``op_type`` stays float32 ("" when it may convert)."""
    if op_type in block_ops:
        return "in block_ops"
    if op_type in allow_ops:
        return ""
    return BLOCK_LIST.get(op_type, "")
