"""Cross-model common-subexpression elimination for merged ensembles.

Two members that share preprocessing or a backbone compute the same tensors twice once they sit
in one graph. With every member's names prefixed and shared inputs unprefixed:

1. initializers with equal (dtype, dims, bytes) become one tensor;
2. walking the nodes in topological order, a node whose key
   ``(domain, op_type, inputs after aliasing, attributes, #outputs)`` was already seen is
   dropped and its outputs become aliases of the first node's outputs.

Inductively every node computing the same function of the same graph inputs is kept once.
Declines: nodes with subgraph attributes (their local names differ per member), nodes with
random outputs, and nodes that produce a graph output.

Why not the cleanup family's ``dedup-initializers`` + ``cse`` passes (run through
``Pass.apply``)? Tried on the merge's flat graph, they do not give the same result:

- ``cse`` compares attributes as written; members from different exporters write defaults
  differently (``Gemm`` with and without ``alpha=1.0, transA=0``), and merging those is what
  this module is for (key above, ``tests/passes/ensemble/test_cse.py``): with the cleanup
  passes two identical members exported that way keep both backbones (0 nodes merged, not 2);
- the merge runs before the merged graph has outputs, and returns the alias map the heads read
  member outputs through. A gs graph needs outputs (``to_model`` drops unreachable nodes) and
  ``onnxopt.graph.merge_tensors`` refuses to merge two graph outputs, so each member output
  would need a temporary Identity tap, removed afterwards, and the aliases recovered from the
  taps' inputs;
- the round trip through onnx-graphsurgeon renames unnamed nodes (``node_names_unique``) and
  reorders the graph, and ``Dropout`` (deterministic in inference) is never merged there;
- the report's ``initializer_bytes`` counts the proto bytes of the dropped initializers;
  ``dedup-initializers`` reports the arrays' bytes.

The initializer half alone would give the same counts, but it would still need the gs round
trip for one of the two halves; the whole job stays here, on the GraphProto.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import onnx

from onnxopt.passes.ensemble.harmonize import rename_refs
from onnxopt.weights import array as tensor_array

logger = logging.getLogger(__name__)

#: ops whose outputs differ between two identical nodes
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


@dataclass
class CseStats:
    """What cross-model CSE merged."""

    initializers: int = 0
    initializer_bytes: int = 0
    nodes: int = 0
    declined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "initializers": self.initializers,
            "initializer_bytes": self.initializer_bytes,
            "nodes": self.nodes,
        }


def _tensor_key(t: onnx.TensorProto) -> tuple:

    arr = tensor_array(t)
    digest = hashlib.sha1(arr.tobytes()).hexdigest()
    return (t.data_type, tuple(t.dims), digest)


def _defaults(domain: str, op_type: str, opset: int) -> dict[str, object]:
    """Attribute defaults from the op schema (empty when the op is unknown)."""
    key = (domain, op_type, opset)
    if key not in _DEFAULTS:
        try:
            schema = onnx.defs.get_schema(op_type, opset, domain)
            _DEFAULTS[key] = {
                name: onnx.helper.get_attribute_value(a.default_value)
                for name, a in schema.attributes.items()
                if a.default_value.name
            }
        except Exception:
            _DEFAULTS[key] = {}
    return _DEFAULTS[key]


_DEFAULTS: dict[tuple[str, str, int], dict[str, object]] = {}


def _node_key(n: onnx.NodeProto, opset: int) -> tuple:
    """Equal keys compute the same function; attributes equal to the schema default are dropped
    (one exporter writes ``auto_pad="NOTSET"``, another leaves it out)."""
    defaults = (
        _defaults(n.domain, n.op_type, opset) if opset and n.domain in ("", "ai.onnx") else {}
    )
    attrs = tuple(
        sorted(
            (a.name, a.SerializeToString())
            for a in n.attribute
            if not (a.name in defaults and onnx.helper.get_attribute_value(a) == defaults[a.name])
        )
    )
    return (n.domain, n.op_type, tuple(n.input), len(n.output), attrs)


def _has_subgraph(n: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute
    )


def cse(
    graph: onnx.GraphProto, protected: set[str] | None = None, opset: int = 0
) -> tuple[dict[str, str], CseStats]:
    """Deduplicate initializers and nodes of ``graph`` in place.

    Args:
        graph: a topologically sorted graph.
        protected: tensor names that must stay produced under their own name (graph outputs).
        opset: the default-domain opset, for attribute defaults (0: compare as written).

    Returns:
        ``alias`` (dropped tensor name -> the kept tensor with the same value) and statistics.
    """
    protected = set(protected or ()) | {o.name for o in graph.output}
    stats = CseStats()
    alias: dict[str, str] = {}
    graph_inputs = {v.name for v in graph.input}
    seen_t: dict[tuple, str] = {}
    keep_t = []
    for t in graph.initializer:
        if t.name in graph_inputs or t.name in protected:
            keep_t.append(t)
            continue
        key = _tensor_key(t)
        if key in seen_t:
            alias[t.name] = seen_t[key]
            stats.initializers += 1
            stats.initializer_bytes += t.ByteSize()
        else:
            seen_t[key] = t.name
            keep_t.append(t)
    if stats.initializers:
        del graph.initializer[:]
        graph.initializer.extend(keep_t)
    seen_n: dict[tuple, onnx.NodeProto] = {}
    keep_n = []
    for n in graph.node:
        rename_refs(n, alias)
        if _has_subgraph(n) or n.op_type in RANDOM_OPS or not n.output:
            keep_n.append(n)
            continue
        key = _node_key(n, opset)
        first = seen_n.get(key)
        if first is None or any(o in protected for o in n.output):
            seen_n.setdefault(key, n)
            keep_n.append(n)
            continue
        for mine, theirs in zip(n.output, first.output):
            if mine:
                alias[mine] = theirs
        stats.nodes += 1
    if stats.nodes:
        del graph.node[:]
        graph.node.extend(keep_n)
    # value_info of dropped tensors is stale
    if alias:
        vis = [v for v in graph.value_info if v.name not in alias]
        del graph.value_info[:]
        graph.value_info.extend(vis)
    logger.debug("cse: %d initializers, %d nodes merged", stats.initializers, stats.nodes)
    return alias, stats


def resolve(alias: dict[str, str], name: str) -> str:
    """Follow ``alias`` to the kept tensor."""
    seen = set()
    while name in alias and name not in seen:
        seen.add(name)
        name = alias[name]
    return name
