"""onnxopt: a pipeline of ONNX graph rewrites, each one proven against onnxruntime.

The public API is imported lazily so ``import onnxopt`` stays fast and never imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["optimize", "quantize", "prune", "merge", "distill", "bench", "export", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from onnxopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
