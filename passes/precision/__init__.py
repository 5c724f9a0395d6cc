"""Precision passes: half precision (``convert-fp16``, ``convert-bf16``) and 4-bit weights
(``quantize-int4``).

See :mod:`.half` for the half-precision conversion, :mod:`.blocklist` for the ops kept in
float32 and why, :mod:`.int4` for 4-bit MatMulNBits, :mod:`.config` for the options.
"""

from .half import ConvertBf16, ConvertFp16
from .int4 import QuantizeInt4

PASSES = [ConvertFp16, ConvertBf16, QuantizeInt4]

__all__ = ["PASSES", "ConvertBf16", "ConvertFp16", "QuantizeInt4"]
