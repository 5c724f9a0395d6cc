"""The interpreter module: an ONNX graph run op by op in torch.

This module imports torch at its top; :func:`onnxopt.onnx2torch.convert.to_torch` imports it
only when called, so ``import onnxopt.onnx2torch`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np
import onnx
import torch

from onnxopt import weights
from onnxopt.errors import ModelError, OnnxoptError, first_line
from onnxopt.onnx2torch.control import CONTROL, check_trip_count, constants_of
from onnxopt.onnx2torch.graph import Body, Node, OpEnv, nodes_of, sanitize, trainable_names
from onnxopt.onnx2torch.ops_nn import NN_OPS
from onnxopt.onnx2torch.ops_tensor import TENSOR_OPS

#: ONNX op type (default domain) -> ``fn(inputs, attrs, env) -> list[Tensor]``
OPS: dict[str, Any] = {**TENSOR_OPS, **NN_OPS}


class OnnxInterpreter(torch.nn.Module):
    """Runs an ONNX graph op by op in torch (see :mod:`onnxopt.onnx2torch.convert`).

    Attributes:
        params: the trainable initializers (``ParameterDict``, sanitized keys).
        keys: ONNX initializer name -> key in ``params``.
        input_names / output_names: the graph's inputs (initializers excluded) and outputs.
        nodes: the nodes in executable order.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        bn_mode: str = "eval",
        trainable: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        g = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.bn_mode = bn_mode
        self.params = torch.nn.ParameterDict()
        self.keys: dict[str, str] = {}
        self._buffer_keys: dict[str, str] = {}
        self._add_initializers(g, set(trainable_names(model) if trainable is None else trainable))
        inits = {t.name for t in g.initializer}
        self.input_names = [v.name for v in g.input if v.name not in inits]
        self.output_names = [v.name for v in g.output]
        self.nodes = nodes_of(g)
        self._body_keys: dict[str, str] = {}
        self._add_bodies(self.nodes, constants_of(g), set())

    def _add_bodies(self, nodes: list[Node], constants: set[str], taken: set[str]) -> None:
        """Bodies' initializers become buffers; a Loop's trip count must be a constant."""
        for node in nodes:
            if node.op == "Loop":
                check_trip_count(node, constants)
            for body in (a for a in node.attrs.values() if isinstance(a, Body)):
                for t in body.initializers:
                    key = "b_" + sanitize(t.name, taken)
                    value = torch.from_numpy(np.array(weights.array(t), copy=True))
                    self.register_buffer(key, value)
                    self._body_keys[t.name] = key
                inner = {t.name for t in body.initializers if int(np.prod(t.dims)) <= 1}
                self._add_bodies(body.nodes, constants | inner, taken)

    def _add_initializers(self, g: onnx.GraphProto, train_set: set[str]) -> None:
        """Initializers in ``train_set`` become parameters, the others buffers."""
        taken: set[str] = set()
        for t in g.initializer:
            key = sanitize(t.name, taken)
            value = torch.from_numpy(np.array(weights.array(t), copy=True))
            if t.name in train_set:
                self.params[key] = torch.nn.Parameter(value)
                self.keys[t.name] = key
            else:
                self.register_buffer("c_" + key, value)
                self._buffer_keys[t.name] = "c_" + key

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
        self.execute(self.nodes, env)
        want = list(self.output_names) + [c for c in capture if c not in self.output_names]
        missing = [w for w in want if w not in env]
        if missing:
            raise OnnxoptError(f"tensor(s) {missing} are not produced by the graph")
        return {w: env[w] for w in want}

    def execute(self, nodes: list[Node], env: MutableMapping[str, Any]) -> None:
        """Run ``nodes`` in order, reading and writing ``env`` (a body's is layered on its
        enclosing scope's)."""
        op_env = OpEnv(self.opset, self.bn_mode, self.training)
        bodies = {n: getattr(self, k) for n, k in self._body_keys.items()}
        for node in nodes:
            args = [env[i] if i else None for i in node.inputs]
            op_env.num_outputs = len(node.outputs)
            try:
                if node.op in CONTROL:
                    outs = CONTROL[node.op](node, args, env, self.execute, bodies)
                else:
                    outs = OPS[node.op](args, node.attrs, op_env)
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
