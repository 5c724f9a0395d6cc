"""ONNX graph -> differentiable ``torch.nn.Module`` (an interpreter of the ONNX ops in torch).

Usable on its own::

    from onnxopt.onnx2torch import to_torch, write_back
    module = to_torch(model)            # nn.Module; initializers are parameters / buffers
    trained = write_back(model, module.initializer_values())  # a copy with the new values

torch is imported only when a converter function is called (``import onnxopt.onnx2torch`` does
not import it). See :mod:`.convert` for the contract, :mod:`.module` for the interpreter
module, :mod:`.graph` for its torch-free side and :mod:`.ops_nn` / :mod:`.ops_tensor` for the
op implementations.
"""

from __future__ import annotations

from onnxopt.onnx2torch.convert import (
    UnsupportedOpsError,
    check_parity,
    check_supported,
    supported_ops,
    to_torch,
    write_back,
)

__all__ = [
    "UnsupportedOpsError",
    "check_parity",
    "check_supported",
    "supported_ops",
    "to_torch",
    "write_back",
]
