"""int8 quantization passes: static (calibrated QDQ) and dynamic (weights only).

See :mod:`.static` for the pipeline, :mod:`.config` for the options, :mod:`.placement` for where
Q/DQ go, :mod:`.calibrate` for the calibrators, :mod:`.fallback` for the accuracy-aware fallback
and :mod:`.dynamic` for dynamic quantization.
"""

from .dynamic import QuantizeDynamic
from .static import QuantizeInt8

PASSES = [QuantizeInt8, QuantizeDynamic]

__all__ = ["PASSES", "QuantizeDynamic", "QuantizeInt8"]
