"""The graph builder the fuzzing motifs write into.

A :class:`Builder` holds one random graph while it grows: its nodes, initializers, inputs and
outputs, and a *pool* of float tensors that motifs read from and write to. Every tensor's
concrete shape is tracked (for the batch size :data:`BATCH`), so motifs only build what is
valid, and the declared shapes of inputs and outputs are right.

Dynamic graphs declare dim 0 of their inputs (and of every tensor derived from them, marked
``batch``) as a symbol; their motifs keep dim 0 in place and never bake its size into a
constant, so that the graph runs for any batch size and the oracle can feed other batches.
With ``dynamic == "all"`` every input dimension is a symbol (the feeds keep the tracked sizes
apart from the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: the batch size shapes are tracked for (dynamic graphs also run with others)
BATCH = 2

FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


@dataclass
class T:
    """A tensor of the graph being built: name, concrete shape (for :data:`BATCH`), element
    type and whether dim 0 follows the batch."""

    name: str
    shape: tuple[int, ...]
    elem: int
    batch: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class InputInfo:
    """How the oracle feeds one graph input: integer inputs carry their valid range
    [lo, hi); ``kind`` says what the values mean (``data``, ``index``, ``mask``)."""

    name: str
    shape: tuple[int, ...]
    elem: int
    batch: bool
    lo: int = 0
    hi: int = 0
    kind: str = "data"


@dataclass
class Builder:
    """One random graph under construction (see the module docstring)."""

    rng: np.random.Generator
    opset: int
    float_type: str = "float32"
    dynamic: str = ""  # "", "batch" or "all"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[InputInfo] = field(default_factory=list)
    outputs: list[T] = field(default_factory=list)
    pool: list[T] = field(default_factory=list)
    motifs: list[str] = field(default_factory=list)
    #: every tensor made by :meth:`op` (some get a value_info, as exporters write them)
    made: list[T] = field(default_factory=list)
    #: NaN and Inf inputs are meaningful for every motif used so far
    specials: bool = True
    _count: int = 0

    # ---------------------------------------------------------------------------------------
    @property
    def ft(self) -> int:
        """The graph's float element type."""
        return FLOAT_TYPES[self.float_type]

    @property
    def np_float(self) -> np.dtype:
        return np.dtype(np.float16 if self.float_type == "float16" else np.float32)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    # ---------------------------------------------------------------------------------------
    def input(
        self,
        shape: tuple[int, ...],
        elem: int | None = None,
        *,
        batch: bool = True,
        lo: int = 0,
        hi: int = 0,
        kind: str = "data",
    ) -> T:
        """A new graph input (dim 0 is the batch when ``batch`` and the rank allows)."""
        batch = batch and len(shape) > 1 and shape[0] == BATCH
        t = T(self.fresh("in"), tuple(shape), self.ft if elem is None else elem, batch)
        self.inputs.append(InputInfo(t.name, t.shape, t.elem, t.batch, lo, hi, kind))
        return t

    def const(self, value: Any, dtype: Any = None, *, node: bool | None = None) -> str:
        """A constant: an initializer, or (sometimes) a ``Constant`` node. Floats without a
        dtype take the graph's float type."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind == "f":
            arr = arr.astype(self.np_float)
        name = self.fresh("c")
        if node is None:
            node = self.chance(0.25)
        if node:
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [name], value=numpy_helper.from_array(arr, name + "_v")
                )
            )
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Any) -> str:
        """An int64 constant (axes, shapes, pads)."""
        return self.const(np.asarray(values, np.int64))

    def weight(self, shape: tuple[int, ...], scale: float = 0.5) -> str:
        return self.const(self.rng.standard_normal(shape) * scale)

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any):
        """Append a node; returns its output names."""
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op, inputs, outs, name=self.fresh("n_" + op), domain=domain, **attrs)
        )
        return outs

    def op(
        self,
        op: str,
        inputs: list[str],
        shape: tuple[int, ...],
        elem: int | None = None,
        *,
        batch: bool = False,
        **attrs: Any,
    ) -> T:
        """A one-output node whose output has the given (tracked) shape."""
        (out,) = self.node(op, inputs, **attrs)
        t = T(out, tuple(shape), self.ft if elem is None else elem, batch)
        self.made.append(t)
        return t

    def ew(self, op: str, inputs: list[str], like: T, **attrs: Any) -> T:
        """A node whose output has ``like``'s shape, type and batch (element-wise ops)."""
        return self.op(op, inputs, like.shape, like.elem, batch=like.batch, **attrs)

    # ---------------------------------------------------------------------------------------
    def take(
        self,
        rank: int | None = None,
        min_rank: int = 0,
        max_rank: int = 5,
        ok: Any = None,
    ) -> T:
        """A float tensor of the pool that fits (the most recent one more often than not), or
        a new graph input of a random fitting shape. A taken tensor may stay in the pool, so
        that later motifs read it too (fan-out)."""
        lo, hi = (rank, rank) if rank is not None else (min_rank, max_rank)
        fits = [
            t
            for t in self.pool
            if lo <= t.rank <= hi
            and t.elem == self.ft
            and (ok is None or ok(t))
            # a dynamic batch as the last axis would size the motifs' constants
            and not (self.dynamic and t.batch and t.rank == 1)
        ]
        if fits and self.chance(0.85):
            t = fits[-1] if self.chance(0.6) else self.choice(fits)
            if self.chance(0.75):
                self.pool.remove(t)
            return t
        r = int(self.rng.integers(max(lo, 1), min(hi, 4) + 1)) if rank is None else rank
        for _ in range(20):
            t = self.input(self.random_shape(r))
            if ok is None or ok(t):
                return t
            self.inputs.pop()
        raise RuntimeError(f"no input shape of rank {r} fits")  # pragma: no cover

    def like(self, x: T) -> T:
        """A float tensor of ``x``'s shape (and batch) from the pool, or a new graph input."""
        fits = [
            t for t in self.pool if t.shape == x.shape and t.batch == x.batch and t.elem == self.ft
        ]
        if fits and self.chance(0.8):
            return self.choice(fits)
        return self.input(x.shape, batch=x.batch)

    def random_shape(self, rank: int) -> tuple[int, ...]:
        if rank == 0:
            return ()
        dims = [int(self.choice([1, 2, 3, 4, 5, 6, 8])) for _ in range(rank - 1)]
        return (BATCH, *dims) if rank > 1 else (int(self.choice([2, 3, 4, 8])),)

    def put(self, t: T, p_output: float = 0.12) -> T:
        """Back into the pool; sometimes also a graph output while later motifs read it."""
        self.pool.append(t)
        if self.chance(p_output):
            self.output(t)
        return t

    def output(self, t: T) -> None:
        if all(o.name != t.name for o in self.outputs) and all(
            i.name != t.name for i in self.inputs
        ):
            self.outputs.append(t)

    # ---------------------------------------------------------------------------------------
    def value_info(self, t: T | InputInfo, *, declare_shape: bool = True):
        dims: list[Any] = list(t.shape) if declare_shape else [None] * len(t.shape)
        if self.dynamic == "all" and isinstance(t, InputInfo):
            dims = [f"{t.name}_d{i}" for i in range(len(dims))]
        if self.dynamic and t.batch and dims:
            dims[0] = "N" if isinstance(t, InputInfo) else None
        return helper.make_tensor_value_info(t.name, t.elem, dims)

    def finish(self) -> onnx.ModelProto:
        """The model: pool leaves become outputs (most of them), inputs and outputs declared."""
        for t in self.pool:
            if self.chance(0.9):
                self.output(t)
        if not self.outputs:
            self.output(self.pool[-1] if self.pool else self._fallback())
        main = {o for n in self.nodes for o in n.output}
        ends = {t.name for t in self.outputs} | {i.name for i in self.inputs}
        inner = [t for t in self.made if t.name in main and t.name not in ends]
        graph = helper.make_graph(
            self.nodes,
            "fuzz",
            [self.value_info(i) for i in self.inputs],
            [self.value_info(o, declare_shape=self.chance(0.85)) for o in self.outputs],
            initializer=self.inits,
            value_info=[self.value_info(t) for t in inner if self.chance(0.3)],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        ir = 8 if self.opset <= 18 else 9 if self.opset <= 20 else 10
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="fuzz")

    def _fallback(self) -> T:
        t = self.take()
        return self.op("Relu", [t.name], t.shape, batch=t.batch)
