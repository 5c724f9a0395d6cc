"""ONNX graph -> differentiable ``torch.nn.Module`` that executes the ONNX ops in order.

The module is an interpreter, not a code generator: ``forward`` walks the (topologically sorted)
nodes and calls one torch function per op (:mod:`onnxopt.onnx2torch.ops_nn`,
:mod:`onnxopt.onnx2torch.ops_tensor`). Gradients flow through every float op, so the initializers can
be trained and written back into the very same graph:

- trainable initializers (float, more than one element, not an operand such as a Pow exponent,
  Clip bound or BatchNormalization statistic) become ``nn.Parameter``s in ``self.params``, a
  ``ParameterDict`` keyed by a sanitized name; ``self.keys`` maps ONNX name -> key;
- every other initializer is a buffer (BatchNormalization running statistics included, which
  ``bn_mode="train"`` updates);
- :func:`write_back` copies the trained values into a copy of the model by initializer name,
  leaving nodes, names, opset and metadata untouched.

Opset 1-22 main-domain graphs are supported; other domains are reported. ``If`` runs the
branch its computed condition selects (both are converted) and ``Loop`` runs with a constant
trip count (:mod:`onnxopt.onnx2torch.control`); other ops with a subgraph (``Scan``) and Loops
whose trip count is computed at run time are refused with a one-line message.

The module class is :class:`~onnxopt.onnx2torch.module.OnnxInterpreter` (its module imports
torch, and only :func:`to_torch` imports it); the torch-free side (node order, attributes,
trainable initializers) is :mod:`onnxopt.onnx2torch.graph`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import ModelError, OnnxoptError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "UnsupportedOpsError",
    "check_parity",
    "check_supported",
    "supported_ops",
    "to_torch",
    "write_back",
]

logger = logging.getLogger(__name__)


def supported_ops() -> set[str]:
    """The ONNX op types (default domain) the converter can execute."""
    from onnxopt.onnx2torch.module import OPS

    return set(OPS)


class UnsupportedOpsError(OnnxoptError):
    """The graph uses ops the converter cannot execute (all of them are listed)."""


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one :class:`UnsupportedOpsError` naming every op the converter lacks."""
    ops = supported_ops() | {"If", "Loop"}
    missing: dict[str, int] = {}

    def visit(g: onnx.GraphProto) -> None:
        for n in g.node:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            if n.domain not in ("", "ai.onnx") or n.op_type not in ops:
                missing[key] = missing.get(key, 0) + 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH and n.op_type in ("If", "Loop"):
                    visit(a.g)

    visit(model.graph)
    if missing:
        listed = ", ".join(f"{k} (x{v})" for k, v in sorted(missing.items()))
        raise UnsupportedOpsError(f"cannot convert the model to torch: unsupported op(s) {listed}")


def to_torch(
    model: onnx.ModelProto, *, bn_mode: str = "eval", trainable: Iterable[str] | None = None
) -> torch.nn.Module:
    """Convert ``model`` into a trainable :class:`torch.nn.Module`.

    Args:
        model: the ONNX model (not modified).
        bn_mode: ``"eval"`` (stored statistics) or ``"train"`` (batch statistics while
            ``module.training``; the stored ones are updated).
        trainable: initializer names to train; ``None`` picks every weight-like float
            initializer (see :mod:`onnxopt.onnx2torch.graph`).

    Returns:
        an :class:`~onnxopt.onnx2torch.module.OnnxInterpreter`: ``forward(*inputs) -> tuple``,
        ``run(feeds, capture) -> dict``, ``params`` (ParameterDict), ``keys`` (ONNX name ->
        key) and ``initializer_values()``.

    Raises:
        UnsupportedOpsError: the graph uses ops that are not covered (all listed).
    """
    from onnxopt.onnx2torch.module import OnnxInterpreter  # imports torch

    if bn_mode not in ("eval", "train"):
        raise OnnxoptError(f"bn_mode must be 'eval' or 'train', not {bn_mode!r}")
    check_supported(model)
    return OnnxInterpreter(model, bn_mode=bn_mode, trainable=trainable)


def write_back(
    model: onnx.ModelProto, values: Mapping[str, np.ndarray], names: Iterable[str] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` hold the new values.

    Dtype and dims of every initializer are kept; only the data changes.

    Args:
        model: the student model.
        values: ONNX initializer name -> array (e.g. ``module.initializer_values()``).
        names: restrict to these initializers (default: all of ``values``).

    Raises:
        ModelError: a name is not an initializer or a shape differs.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(values if names is None else names)
    by_name = {t.name: t for t in out.graph.initializer}
    unknown = wanted - set(by_name)
    if unknown:
        raise ModelError(f"write-back: {sorted(unknown)[:5]} are not initializers of the student")
    for name in wanted:
        t = by_name[name]
        arr = np.asarray(values[name])
        if tuple(arr.shape) != tuple(t.dims):
            raise ModelError(
                f"write-back: '{name}' has shape {list(arr.shape)}, "
                f"the initializer has {list(t.dims)}"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        t.CopyFrom(numpy_helper.from_array(arr.astype(dtype), name))
    return out


def check_parity(
    module: Any,
    model: onnx.ModelProto,
    runs: list[dict[str, np.ndarray]],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Check that ``module`` computes what onnxruntime computes on ``runs``.

    The test is ``|t - o| <= atol * max(1, max|o|) + rtol * |o|`` per output (o = onnxruntime).

    Returns:
        the largest absolute difference seen.

    Raises:
        OnnxoptError: an output differs beyond the tolerance (names it and the error).
    """
    import torch

    from onnxopt.data import Feeds
    from onnxopt.runner import Runner
    from onnxopt.verify import Exact, Tol

    ref = Runner().run(model, Feeds(runs))
    was_training = module.training
    module.eval()
    got = []
    with torch.no_grad():
        for run in runs:
            out = module.run(run)
            got.append({k: v.detach().cpu().numpy() for k, v in out.items()})
    module.train(was_training)
    verdict = Exact({"": Tol(rtol=rtol, atol=atol)}).check(ref, got)
    max_abs = max(
        (
            float(np.abs(r[k].astype(np.float64) - g[k].astype(np.float64)).max(initial=0.0))
            for r, g in zip(ref, got, strict=False)
            for k in r
            if r[k].dtype.kind == "f"
        ),
        default=0.0,
    )
    if not verdict.ok:
        raise OnnxoptError(f"torch forward differs from onnxruntime: {verdict.reason}")
    return max_abs
