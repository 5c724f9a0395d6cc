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

Opset 1-22 main-domain graphs are supported; other domains and subgraph ops are reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import ModelError, OnnxoptError, first_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: input slots that are operands (hyper-parameters) rather than weights: never trained
NON_TRAINABLE_SLOTS: dict[str, set[int]] = {
    "Pow": {1},
    "Clip": {1, 2},
    "BatchNormalization": {3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Reshape": {1},
    "Expand": {1},
    "Slice": {1, 2, 3, 4},
    "Range": {0, 1, 2},
}


def _ops() -> dict[str, Any]:
    from onnxopt.onnx2torch.ops_nn import NN_OPS
    from onnxopt.onnx2torch.ops_tensor import TENSOR_OPS

    return {**TENSOR_OPS, **NN_OPS}


def supported_ops() -> set[str]:
    """The ONNX op types (default domain) the converter can execute."""
    return set(_ops())


class UnsupportedOpsError(OnnxoptError):
    """The graph uses ops the converter cannot execute (all of them are listed)."""


@dataclass
class OpEnv:
    """What an op function may know besides its inputs and attributes."""

    opset: int
    bn_mode: str = "eval"
    training: bool = False
    num_outputs: int = 1


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


def sanitize(name: str, taken: set[str]) -> str:
    """A ParameterDict-safe key for ``name`` (no dots, unique within ``taken``)."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    if key[0].isdigit():
        key = "_" + key
    base, i = key, 1
    while key in taken:
        key = f"{base}_{i}"
        i += 1
    taken.add(key)
    return key


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, (onnx.GraphProto, list)) and v and isinstance(v[0], onnx.GraphProto):
            raise ModelError(f"node '{node.name}' ({node.op_type}) has a subgraph")
        elif isinstance(v, onnx.GraphProto):
            raise ModelError(f"node '{node.name}' ({node.op_type}) has a subgraph")
        out[a.name] = v
    return out


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one :class:`UnsupportedOpsError` naming every op the converter lacks."""
    ops = supported_ops()
    missing: dict[str, int] = {}
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        if n.domain not in ("", "ai.onnx") or n.op_type not in ops:
            missing[key] = missing.get(key, 0) + 1
    if missing:
        listed = ", ".join(f"{k} (x{v})" for k, v in sorted(missing.items()))
        raise UnsupportedOpsError(f"cannot convert the model to torch: unsupported op(s) {listed}")


def _trainable_names(model: onnx.ModelProto) -> set[str]:
    inits = {t.name: t for t in model.graph.initializer}
    blocked: set[str] = set()
    for n in model.graph.node:
        for slot in NON_TRAINABLE_SLOTS.get(n.op_type, ()):
            if slot < len(n.input):
                blocked.add(n.input[slot])
    out = set()
    for name, t in inits.items():
        floaty = t.data_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        )
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        if floaty and numel > 1 and name not in blocked:
            out.add(name)
    return out


def to_torch(
    model: onnx.ModelProto, *, bn_mode: str = "eval", trainable: Iterable[str] | None = None
) -> torch.nn.Module:
    """Convert ``model`` into a trainable :class:`torch.nn.Module`.

    Args:
        model: the ONNX model (not modified).
        bn_mode: ``"eval"`` (stored statistics) or ``"train"`` (batch statistics while
            ``module.training``; the stored ones are updated).
        trainable: initializer names to train; ``None`` picks every weight-like float
            initializer (see the module docstring).

    Returns:
        a module with ``forward(*inputs) -> tuple``, ``run(feeds, capture) -> dict``,
        ``params`` (ParameterDict), ``keys`` (ONNX name -> key) and ``initializer_values()``.

    Raises:
        UnsupportedOpsError: the graph uses ops that are not covered (all listed).
    """
    return _build(model, bn_mode=bn_mode, trainable=trainable)


def _build(model: onnx.ModelProto, *, bn_mode: str, trainable: Iterable[str] | None) -> Any:
    import torch

    if bn_mode not in ("eval", "train"):
        raise OnnxoptError(f"bn_mode must be 'eval' or 'train', not {bn_mode!r}")
    check_supported(model)
    ops = _ops()

    class _OnnxInterpreter(torch.nn.Module):
        """Runs an ONNX graph op by op in torch (see :mod:`onnxopt.onnx2torch.convert`)."""

        def __init__(self) -> None:
            super().__init__()
            g = model.graph
            self.opset = next(
                (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
            )
            self.bn_mode = bn_mode
            train_set = set(_trainable_names(model) if trainable is None else trainable)
            self.params = torch.nn.ParameterDict()
            self.keys: dict[str, str] = {}
            self._buffer_keys: dict[str, str] = {}
            taken: set[str] = set()
            for t in g.initializer:
                arr = numpy_helper.to_array(t)
                key = sanitize(t.name, taken)
                value = torch.from_numpy(np.array(arr, copy=True))
                if t.name in train_set:
                    self.params[key] = torch.nn.Parameter(value)
                    self.keys[t.name] = key
                else:
                    self.register_buffer("c_" + key, value)
                    self._buffer_keys[t.name] = "c_" + key
            inits = {t.name for t in g.initializer}
            self.input_names = [v.name for v in g.input if v.name not in inits]
            self.output_names = [v.name for v in g.output]
            self.nodes = [
                _Node(
                    n.name or f"{n.op_type}_{i}",
                    n.op_type,
                    list(n.input),
                    list(n.output),
                    _attrs(n),
                )
                for i, n in enumerate(_toposort(g))
            ]

        def _value(self, name: str) -> torch.Tensor:
            if name in self.keys:
                return self.params[self.keys[name]]
            return getattr(self, self._buffer_keys[name])

        def run(self, feeds: Mapping[str, Any], capture: Iterable[str] = ()) -> dict[str, Any]:
            """Execute the graph; returns the graph outputs plus every name in ``capture``."""
            env: dict[str, torch.Tensor] = {}
            for name in self.input_names:
                if name not in feeds:
                    raise OnnxoptError(f"missing input '{name}'")
                v = feeds[name]
                env[name] = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
            for name in list(self.keys) + list(self._buffer_keys):
                env[name] = self._value(name)
            op_env = OpEnv(self.opset, self.bn_mode, self.training)
            for node in self.nodes:
                args = [env[i] if i else None for i in node.inputs]
                op_env.num_outputs = len(node.outputs)
                try:
                    outs = ops[node.op](args, node.attrs, op_env)
                except OnnxoptError:
                    raise
                except Exception as e:
                    raise ModelError(
                        f"torch execution of node '{node.name}' ({node.op}) failed: "
                        f"{type(e).__name__}: {first_line(e)}"
                    ) from e
                for o, v in zip(node.outputs, outs, strict=False):
                    if o:
                        env[o] = v
            want = list(self.output_names) + [c for c in capture if c not in self.output_names]
            missing = [w for w in want if w not in env]
            if missing:
                raise OnnxoptError(f"tensor(s) {missing} are not produced by the graph")
            return {w: env[w] for w in want}

        def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            feeds = dict(zip(self.input_names, args, strict=False))
            feeds.update(kwargs)
            out = self.run(feeds)
            return tuple(out[n] for n in self.output_names)

        def initializer_values(self) -> dict[str, np.ndarray]:
            """Current values of every parameter and buffer, by ONNX initializer name."""
            out = {n: self.params[k].detach().cpu().numpy() for n, k in self.keys.items()}
            for n, k in self._buffer_keys.items():
                out[n] = getattr(self, k).detach().cpu().numpy()
            return out

    return _OnnxInterpreter()


def _toposort(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an executable order (exported graphs usually are already)."""
    known = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in known})[:5]
            raise ModelError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    return order


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
    from onnxopt.verify import Exact, Runner, Tol

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
