"""Gated cascade: the cheap member answers when it is confident, else the expensive one runs.

Graph::

    p     = softmax(y_cheap)                  (skipped when y_cheap is already a Softmax output)
    conf  = min over the batch of max_c p     (ReduceMax over the class axis, then ReduceMin)
    out   = If(conf >= T, then: y_cheap, else: <expensive member's own nodes> -> y_expensive)

Batch semantics: the gate decides for the whole batch. The cheap answer is returned only when
*every* sample of the batch has top probability >= T; otherwise the expensive member runs on the
whole batch and its answer is returned for every sample. Run with batch 1 for per-sample
routing (that is how the fit and the reported accuracy treat it).

Nodes the two members share (after cross-model CSE) stay in the main graph; only the nodes the
expensive output needs and the cheap output does not move into the ``else`` branch, so
onnxruntime never executes them when the gate passes. Initializers stay in the main graph and
are read from the outer scope.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from onnxopt.passes.ensemble.context import MergeContext
from onnxopt.passes.ensemble.fit import choose_threshold
from onnxopt.passes.ensemble.modes import Head, np_confidence


def reads(n: onnx.NodeProto) -> list[str]:
    """Tensors a node reads, including outer-scope names read inside its subgraphs."""
    out = [x for x in n.input if x]
    for a in n.attribute:
        sgs = (
            [a.g]
            if a.type == onnx.AttributeProto.GRAPH
            else (list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
        )
        for sg in sgs:
            for sn in sg.node:
                out.extend(reads(sn))
    return out


def ancestors(nodes: list[onnx.NodeProto], targets: list[str]) -> set[int]:
    """Indices of the nodes needed to compute ``targets``."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    need: set[int] = set()
    stack = [t for t in targets if t in producer]
    while stack:
        i = producer[stack.pop()]
        if i in need:
            continue
        need.add(i)
        stack.extend(x for x in reads(nodes[i]) if x in producer)
    return need


def is_softmax_output(nodes: list[onnx.NodeProto], name: str) -> bool:
    return any(n.op_type == "Softmax" and name in n.output for n in nodes)


def build_cascade(
    nodes: list[onnx.NodeProto],
    head: Head,
    cheap: str,
    expensive: str,
    out: str,
    out_type: onnx.TypeProto,
    threshold: float,
) -> tuple[list[onnx.NodeProto], int]:
    """The main graph's nodes (cheap part, gate, If); returns them and the branch's size."""
    keep = ancestors(nodes, [cheap])
    branch = ancestors(nodes, [expensive]) - keep
    p = cheap if is_softmax_output(nodes, cheap) else head.softmax(cheap)
    top = head.reduce("ReduceMax", p, [-1], keepdims=0)
    conf = head.reduce("ReduceMin", top, None, keepdims=0)
    cond = head.greater_or_equal(conf, threshold)

    def branch_graph(name: str, body: list[onnx.NodeProto], src: str) -> onnx.GraphProto:
        res = f"{out}/{name}"
        vi = onnx.ValueInfoProto()
        vi.name = res
        vi.type.CopyFrom(out_type)
        ident = helper.make_node("Identity", [src], [res], name=f"{out}/{name}/identity")
        return helper.make_graph([*body, ident], f"{name}_branch", [], [vi])

    body = [nodes[i] for i in sorted(branch)]
    if_node = helper.make_node(
        "If",
        [cond],
        [out],
        name="ensemble/cascade_if",
        then_branch=branch_graph("cheap", [], cheap),
        else_branch=branch_graph("expensive", body, expensive),
    )
    main = [nodes[i] for i in sorted(keep)]
    return [*main, *head.nodes, if_node], len(body)


def cascade_head(
    ctx: MergeContext,
    head: Head,
    flat: onnx.GraphProto,
    outs: list[str],
    vi: onnx.ValueInfoProto,
    fit_runs: list[np.ndarray] | None,
    y_fit: np.ndarray | None,
) -> Callable[[list[np.ndarray]], dict[str, np.ndarray]]:
    """Gate + If in place of ``flat``'s nodes (the head's nodes move into ``flat``); returns the
    numpy reference of one run. Without a threshold, it is chosen on the fit split to reach
    the target accuracy (:func:`~onnxopt.passes.ensemble.fit.choose_threshold`)."""
    params, out = ctx.report.params, vi.name
    nodes = list(flat.node)
    probs = is_softmax_output(nodes, outs[0])
    ctx.cheap_is_probs = probs
    t = ctx.config.threshold
    if t is None:
        t = _fitted_threshold(ctx, fit_runs, y_fit, probs)
    t = float(t)
    params.update(threshold=t, gate="softmax top-1, min over the batch")
    new_nodes, moved = build_cascade(nodes, head, outs[0], outs[1], out, vi.type, t)
    params["expensive_nodes_in_branch"] = moved
    del flat.node[:]
    flat.node.extend(new_nodes)
    head.nodes.clear()
    if fit_runs is not None:
        conf = np_confidence(np.asarray(fit_runs[0]), probs)
        params["cheap_fraction_fit"] = float((conf >= np.float32(t)).mean())

    def ref(ys: list[np.ndarray]) -> dict[str, np.ndarray]:
        c = np_confidence(ys[0], probs).min()
        return {out: ys[0] if c >= np.float32(t) else ys[1]}

    return ref


def _fitted_threshold(
    ctx: MergeContext, fit_runs: list[np.ndarray], y_fit: np.ndarray, probs: bool
) -> float:
    """The gate threshold that reaches ``target_accuracy`` on the fit split."""
    target = float(ctx.config.target_accuracy)
    target = target * 100.0 if target <= 1.0 else target
    conf = np_confidence(fit_runs[0], probs)
    t, note = choose_threshold(
        conf, np.argmax(fit_runs[0], -1) == y_fit, np.argmax(fit_runs[1], -1) == y_fit, target
    )
    ctx.report.params["target_accuracy"] = target
    if note:
        ctx.report.notes.append(note)
    return t
