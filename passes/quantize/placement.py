"""Where Q/DQ pairs go, so that onnxruntime's QDQ transformer fuses them into int8 kernels.

onnxruntime groups ``DQ -> op -> Q`` "node units" and replaces them with int8 kernels:
Conv -> QLinearConv, MatMul -> QLinearMatMul (or MatMulIntegerToFloat when the output stays
float), Gemm -> QGemm, Add/Mul -> QLinearAdd/QLinearMul, Concat -> QLinearConcat, average
pooling -> QLinearAveragePool. Data-movement ops (Reshape, Transpose, MaxPool, ...) run on int8
directly when the DQ before and the Q after share scale and zero point ("drop" rule). Relu/Clip
after a quantized producer vanish when the Q's zero point is the type's minimum.

The plan therefore:
1. enables the *compute* sites (``CANDIDATES``) that are eligible and not excluded; an
   element-wise site (Add, Mul, Concat, pooling, Sigmoid, ...) only when at least one of its
   inputs already lives in int8 (the quantized output of another site, possibly through
   data-movement ops or a folded Relu): QLinearAdd pays off between Convs, whereas a bias Add
   or a GELU Mul after a float-output MatMul would only add requantization (``elementwise=
   "all"`` restores the old behaviour);
2. quantizes every float activation input of an enabled site and the output of every enabled
   site that needs a Q after it (all but Gemm/MatMul, whose output may stay float);
3. folds a single-consumer Relu / Clip(0, c) into its producer's output range (uint8 only:
   ``Q(x; s, zp=0)`` saturates at 0, so ``Q(Relu(x)) == Q(x)``);
4. propagates quantization through data-movement ops in both directions and makes their input
   and output one *group* sharing (scale, zero point); Concat's inputs join its output's group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_graph_output

logger = logging.getLogger(__name__)

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BINARY = ("Add", "Mul")
UNARY = ("AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu")
CANDIDATES = (*WEIGHTED, *BINARY, "Concat", *UNARY)
#: ops whose int8 run needs the same (scale, zero point) on input and output
PASS_THROUGH = (
    "MaxPool",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Slice",
    "Identity",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
)
FOLDABLE = ("Relu", "Clip")
#: ops after which a residual Add/Mul stays float (transformer residual stream)
FLOAT_SINKS = ("LayerNormalization", "ReduceMean", "Softmax", "SimplifiedLayerNormalization")


def _is_float_var(t: gs.Tensor) -> bool:
    return (
        isinstance(t, gs.Variable)
        and t.name != ""
        and (t.dtype is not None and np.dtype(t.dtype) == np.float32)
    )


@dataclass(frozen=True)
class _Meta:
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _const_f32(t: gs.Tensor) -> _Meta | None:
    """Shape of a float32 constant, read without loading an initializer's values.

    Planning touches every weight; loading them would hold a second copy of the model.
    """
    if isinstance(t, gs.Constant):
        if np.dtype(t.dtype) != np.float32:
            return None
        return _Meta(tuple(int(d) for d in t.shape))
    v = const_value(t)
    if v is None or v.dtype != np.float32:
        return None
    return _Meta(tuple(v.shape))


@dataclass
class Site:
    """An enabled compute node and what to do with its inputs."""

    node: gs.Node
    acts: list[int]  # input indices of activation tensors to quantize
    weight: int | None = None  # input index of a constant weight
    axis: int | None = None  # per-channel axis of the weight (None: per-tensor)
    bias: int | None = None  # input index of a constant 1-D bias
    out_q: bool = True  # its output needs a Q (all but Gemm/MatMul)
    #: MatMul only: the ``Add(y, b)`` that adds a constant 1-D bias ``b`` (``bias`` indexes it)
    bias_node: gs.Node | None = None


@dataclass
class Plan:
    sites: dict[str, Site] = field(default_factory=dict)
    #: logical activation tensor name -> group id
    group: dict[str, int] = field(default_factory=dict)
    #: logical tensor name -> physical source tensor (folded Relu: relu output -> producer out)
    source: dict[str, str] = field(default_factory=dict)
    #: folded Relu/Clip node name -> its output name
    folds: dict[str, str] = field(default_factory=dict)
    #: tensors whose every consumer reads the DQ (producer fuses with its Q)
    rewire_all: set[str] = field(default_factory=set)
    #: embedding Gathers (constant table) quantized with pass-through output
    embeddings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def tensors(self) -> list[str]:
        return sorted(self.group)

    def members(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for t, g in self.group.items():
            out.setdefault(g, []).append(t)
        return out


def eligible(node: gs.Node, *, per_channel: bool, quantize_residual: bool) -> Site | str:
    """A Site for ``node`` or the reason it stays float."""
    op, ins = node.op, node.inputs
    if op in ("Conv", "ConvTranspose"):
        w = _const_f32(ins[1]) if len(ins) > 1 else None
        if w is None or not _is_float_var(ins[0]):
            return f"{node.name}: {op} weight is not a float32 constant"
        bias = 2 if len(ins) > 2 and _const_f32(ins[2]) is not None else None
        if len(ins) > 2 and bias is None and ins[2].name:
            return f"{node.name}: {op} bias is not a constant"
        axis = 0 if op == "Conv" else (1 if node.attrs.get("group", 1) == 1 else None)
        return Site(node, [0], 1, axis if per_channel else None, bias)
    if op == "Gemm":
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return f"{node.name}: Gemm with transA/alpha/beta is left float"
        w = _const_f32(ins[1])
        if w is None or w.ndim != 2 or not _is_float_var(ins[0]):
            return f"{node.name}: Gemm B is not a 2-D float32 constant"
        bias = None
        if len(ins) > 2 and ins[2].name:
            c = _const_f32(ins[2])
            if c is None or c.ndim != 1 or c.shape[0] != w.shape[0 if a.get("transB", 0) else 1]:
                return f"{node.name}: Gemm C is not a 1-D constant bias"
            bias = 2
        axis = (0 if a.get("transB", 0) else 1) if per_channel else None
        return Site(node, [0], 1, axis, bias, out_q=False)
    if op == "MatMul":
        if not _is_float_var(ins[0]):
            return f"{node.name}: MatMul A is not a float activation"
        w = _const_f32(ins[1])
        if w is not None:
            axis = 1 if (per_channel and w.ndim == 2) else None
            site = Site(node, [0], 1, axis, out_q=False)
            if w.ndim == 2:
                site.bias_node, site.bias = _bias_add(node, w.shape[1])
            return site
        if _is_float_var(ins[1]):
            return Site(node, [0, 1], out_q=False)
        return f"{node.name}: MatMul B is neither a float constant nor an activation"
    if op in BINARY:
        if not all(_is_float_var(t) for t in ins):
            return f"{node.name}: {op} with a constant operand is left float"
        if not quantize_residual and any(c.op in FLOAT_SINKS for c in node.outputs[0].outputs):
            return f"{node.name}: {op} feeds the float residual stream (LayerNorm/Softmax)"
        return Site(node, [0, 1])
    if op == "Concat":
        if not all(_is_float_var(t) for t in ins):
            return f"{node.name}: Concat with constant inputs is left float"
        return Site(node, list(range(len(ins))))
    if op in UNARY:
        if not _is_float_var(ins[0]):
            return f"{node.name}: {op} input is not a float activation"
        return Site(node, [0])
    return f"{node.name}: {op} has no int8 kernel"


def _bias_add(node: gs.Node, n: int) -> tuple[gs.Node | None, int | None]:
    """The ``Add`` adding a constant ``[n]`` bias to a MatMul's output, and the bias's index.

    Quantized as int32 (scale ``s_x·s_w``) it lets onnxruntime fuse ``MatMul + Add`` into QGemm
    (u8·s8 GEMM with the bias in the accumulator); with a float bias it builds a float Gemm on
    dequantized weights instead, several times slower than fp32.
    """
    users = node.outputs[0].outputs
    if len(users) != 1 or users[0].op != "Add" or len(users[0].inputs) != 2:
        return None, None
    add = users[0]
    for i, t in enumerate(add.inputs):
        b = _const_f32(t)
        if b is not None and t is not node.outputs[0] and b.shape == (n,):
            return add, i
    return None, None


class _UF:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def make_plan(
    graph: gs.Graph,
    enabled: set[str],
    *,
    per_channel: bool = True,
    fold_relu: bool = True,
    quantize_residual: bool = False,
    embeddings: bool = True,
    elementwise: str = "int8-inputs",
) -> Plan:
    """Plan Q/DQ placement for the compute nodes named in ``enabled`` (steps 1-4 of the module
    docstring).

    ``elementwise``: ``"int8-inputs"`` (default) enables an element-wise site only when one of
    its inputs is already int8; ``"all"`` enables every eligible one.
    """
    plan = Plan()
    q = _enable_sites(
        graph,
        enabled,
        plan,
        per_channel=per_channel,
        quantize_residual=quantize_residual,
        elementwise=elementwise,
    )
    if fold_relu:
        _fold_relus(graph, plan, q)
    uf = _propagate(graph, plan, q)
    tensors = graph.tensors()
    roots: dict[str, int] = {}
    for t in sorted(q):
        if t not in tensors and t not in plan.source:
            continue
        plan.group[t] = roots.setdefault(uf.find(t), len(roots))
    if embeddings:
        plan.embeddings = [
            n.name
            for n in graph.nodes
            if n.op == "Gather" and n.name in enabled and _const_f32(n.inputs[0]) is not None
        ]
    return plan


def _enable_sites(
    graph: gs.Graph,
    enabled: set[str],
    plan: Plan,
    *,
    per_channel: bool,
    quantize_residual: bool,
    elementwise: str,
) -> set[str]:
    """Step 1-2: fill ``plan.sites`` in one topological sweep; returns the tensors to quantize
    (activation inputs of the sites, and the outputs that need a Q)."""
    q: set[str] = set()
    int8: set[str] = set()  # tensors that will exist as int8 anyway (topological sweep)
    for node in graph.nodes:
        if (
            node.op in (*PASS_THROUGH, *FOLDABLE)
            and node.inputs
            and node.outputs
            and node.inputs[0].name in int8
        ):
            int8.add(node.outputs[0].name)
        if node.name not in enabled or node.op == "Gather":  # embeddings: see make_plan
            continue
        site = eligible(node, per_channel=per_channel, quantize_residual=quantize_residual)
        if isinstance(site, str):
            plan.notes.append(site)
            continue
        if (
            elementwise != "all"
            and node.op not in WEIGHTED
            and not any(node.inputs[i].name in int8 for i in site.acts)
        ):
            plan.notes.append(f"{node.name}: {node.op} left float (no input is int8 already)")
            continue
        if site.out_q:
            int8.add(node.outputs[0].name)
        plan.sites[node.name] = site
        for i in site.acts:
            q.add(node.inputs[i].name)
        y = node.outputs[0]
        if site.out_q and _is_float_var(y) and not is_graph_output(graph, y):
            q.add(y.name)
            plan.rewire_all.add(y.name)
    return q


def _fold_relus(graph: gs.Graph, plan: Plan, q: set[str]) -> None:
    """Step 3: a single-consumer Relu / Clip(0, c) after a quantized output takes its Q."""
    for node in graph.nodes:
        if node.op not in FOLDABLE or not node.inputs or not node.outputs:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if x.name not in plan.rewire_all or len(x.outputs) != 1 or is_graph_output(graph, y):
            continue
        if node.op == "Clip" and not _clip_from_zero(node):
            continue
        q.discard(x.name)
        plan.rewire_all.discard(x.name)
        q.add(y.name)
        plan.rewire_all.add(y.name)
        plan.source[y.name] = x.name
        plan.folds[node.name] = y.name


def _propagate(graph: gs.Graph, plan: Plan, q: set[str]) -> _UF:
    """Step 4: spread quantization through data-movement ops (to a fixpoint) and union their
    input and output, and Concat's inputs with its output, into groups."""
    uf = _UF()
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.op not in PASS_THROUGH or not node.inputs or len(node.outputs) != 1:
                continue
            x, y = node.inputs[0], node.outputs[0]
            if not (_is_float_var(x) and _is_float_var(y)):
                continue
            if (x.name in q) != (y.name in q):
                if is_graph_output(graph, y) and y.name not in q:
                    continue
                q.update((x.name, y.name))
                changed = True
            if x.name in q:
                uf.union(x.name, y.name)
                plan.rewire_all.add(y.name)
    for site in plan.sites.values():
        if site.node.op == "Concat":
            for t in site.node.inputs:
                uf.union(site.node.outputs[0].name, t.name)
    return uf


def _clip_from_zero(node: gs.Node) -> bool:
    if len(node.inputs) >= 2:  # opset >= 11: min/max inputs
        lo = const_value(node.inputs[1]) if node.inputs[1].name else None
        return lo is not None and float(lo) == 0.0
    return float(node.attrs.get("min", -np.inf)) == 0.0


def quantized_consumer(node: gs.Node, plan: Plan, q_names: set[str]) -> bool:
    """Whether ``node`` reads the DQ'd value (an enabled site or a quantized pass-through op)."""
    if node.name in plan.sites:
        return True
    if node.op in PASS_THROUGH and node.outputs and node.outputs[0].name in q_names:
        return True
    return False
