"""Combination heads of the ensemble modes, as ONNX nodes and as the numpy reference.

With member outputs ``y_k`` of shape ``[N, C]`` (k = 0..n-1) and ``z_k = y_k`` or
``z_k = softmax(y_k)`` (``on="probs"``):

- average:  ``out = (sum_k z_k) * (1/n)``
- weighted: ``out = sum_k w_k z_k``
- max:      ``out = max_k z_k`` (element-wise)
- vote:     ``a_k = argmax y_k``; ``votes_c = sum_k [a_k = c]``;
  ``first_c = max_k (n - k) [a_k = c]`` (n - index of the first member voting c, 0 if none);
  ``out = votes + first / (n + 1)``, so ``argmax out`` is the majority class with ties going
  to the first member's choice (``first < n + 1`` never outweighs one vote);
  ``out_label = argmax out`` (int64 ``[N]``).
- stack:    ``out = softmax(concat_k(z_k) W + b)`` (logistic) or ``concat_k(z_k) W + b``
  (ridge), as Gemm (+Softmax).

Every head has a numpy twin computing the same thing from the members' separate runs; the
merge verifies the graph against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

PARALLEL_MODES = ("average", "weighted", "vote", "max")
ALL_MODES = (*PARALLEL_MODES, "serial", "stack", "cascade")
ON_CHOICES = ("outputs", "logits", "probs")


@dataclass
class Head:
    """Collects the nodes and initializers of a combination head with unique names."""

    opset: int
    prefix: str = "ensemble/"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{self.prefix}{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        name = out or self.fresh(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [name], name=self.fresh(op_type), **attrs)
        )
        return name

    def softmax(self, x: str) -> str:
        return self.op("Softmax", [x], axis=-1)

    def reduce(self, op_type: str, x: str, axes: list[int] | None, keepdims: int) -> str:
        """ReduceMax/ReduceMin with ``axes`` as attribute (opset < 18) or input (>= 18)."""
        if axes is None:
            return self.op(op_type, [x], keepdims=keepdims)
        if self.opset >= 18:
            return self.op(
                op_type, [x, self.const("axes", np.array(axes, np.int64))], keepdims=keepdims
            )
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def greater_or_equal(self, x: str, threshold: float) -> str:
        t = self.const("threshold", np.array(threshold, np.float32))
        if self.opset >= 12:
            return self.op("GreaterOrEqual", [x, t])
        return self.op("Not", [self.op("Less", [x, t])])


def transform(head: Head, outs: list[str], on: str) -> list[str]:
    return [head.softmax(y) for y in outs] if on == "probs" else list(outs)


def build_parallel(
    head: Head, outs: list[str], mode: str, on: str, out: str, weights: list[float] | None = None
) -> list[str]:
    """Append the head of a parallel mode; returns the graph output names."""
    n = len(outs)
    if mode == "vote":
        depth = head.op(
            "Gather",
            [head.op("Shape", [outs[0]]), head.const("last", np.array(-1, np.int64))],
            axis=0,
        )
        values = head.const("onehot_values", np.array([0.0, 1.0], np.float32))
        hots = [
            head.op("OneHot", [head.op("ArgMax", [y], axis=-1, keepdims=0), depth, values], axis=-1)
            for y in outs
        ]
        votes = head.op("Sum", hots)
        firsts = [
            head.op("Mul", [h, head.const("rank", np.array(n - k, np.float32))])
            for k, h in enumerate(hots)
        ]
        first = head.op("Max", firsts)
        tie = head.op("Mul", [first, head.const("tie", np.array(1.0 / (n + 1), np.float32))])
        score = head.op("Add", [votes, tie], out=out)
        head.op("ArgMax", [score], out=out + "_label", axis=-1, keepdims=0)
        return [out, out + "_label"]
    zs = transform(head, outs, on)
    if mode == "average":
        head.op(
            "Mul", [head.op("Sum", zs), head.const("inv_n", np.array(1.0 / n, np.float32))], out=out
        )
    elif mode == "weighted":
        assert weights is not None and len(weights) == n
        terms = [
            head.op("Mul", [z, head.const("w", np.array(w, np.float32))])
            for z, w in zip(zs, weights)
        ]
        head.op("Sum", terms, out=out)
    elif mode == "max":
        head.op("Max", zs, out=out)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(mode)
    return [out]


def build_stack(
    head: Head, outs: list[str], on: str, out: str, w: np.ndarray, b: np.ndarray, kind: str
) -> list[str]:
    """Concat -> Gemm (-> Softmax for the logistic meta-learner)."""
    zs = transform(head, outs, on)
    feat = head.op("Concat", zs, axis=-1) if len(zs) > 1 else zs[0]
    wn = head.const("meta_W", w.astype(np.float32))
    bn = head.const("meta_b", b.astype(np.float32))
    if kind == "logistic":
        head.op("Softmax", [head.op("Gemm", [feat, wn, bn])], out=out, axis=-1)
    else:
        head.op("Gemm", [feat, wn, bn], out=out)
    return [out]


# --------------------------------------------------------------------------------------------
# numpy twins


def np_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def np_transform(ys: list[np.ndarray], on: str) -> list[np.ndarray]:
    return [np_softmax(y) if on == "probs" else np.asarray(y, np.float32) for y in ys]


def np_parallel(
    ys: list[np.ndarray], mode: str, on: str, out: str, weights: list[float] | None = None
) -> dict[str, np.ndarray]:
    """The numpy combination that :func:`build_parallel` must reproduce."""
    n = len(ys)
    if mode == "vote":
        c = ys[0].shape[-1]
        hots = [np.eye(c, dtype=np.float32)[np.argmax(y, axis=-1)] for y in ys]
        votes = np.sum(hots, axis=0, dtype=np.float32)
        first = np.max([h * np.float32(n - k) for k, h in enumerate(hots)], axis=0)
        score = (votes + first * np.float32(1.0 / (n + 1))).astype(np.float32)
        return {out: score, out + "_label": np.argmax(score, axis=-1).astype(np.int64)}
    zs = np_transform(ys, on)
    if mode == "average":
        r = np.sum(zs, axis=0, dtype=np.float32) * np.float32(1.0 / n)
    elif mode == "weighted":
        assert weights is not None
        r = np.sum([z * np.float32(w) for z, w in zip(zs, weights)], axis=0, dtype=np.float32)
    elif mode == "max":
        r = np.max(zs, axis=0)
    else:  # pragma: no cover
        raise ValueError(mode)
    return {out: r.astype(np.float32)}


def np_features(ys: list[np.ndarray], on: str) -> np.ndarray:
    return np.concatenate(np_transform(ys, on), axis=-1)


def np_stack(
    ys: list[np.ndarray], on: str, out: str, w: np.ndarray, b: np.ndarray, kind: str
) -> dict[str, np.ndarray]:
    logits = np_features(ys, on) @ w.astype(np.float32) + b.astype(np.float32)
    return {out: np_softmax(logits) if kind == "logistic" else logits.astype(np.float32)}


def np_confidence(y: np.ndarray, is_probs: bool) -> np.ndarray:
    """Per-sample top probability of a cheap member's output."""
    p = np.asarray(y, np.float32) if is_probs else np_softmax(y)
    return p.reshape(p.shape[0], -1).max(axis=-1) if p.ndim > 1 else p
