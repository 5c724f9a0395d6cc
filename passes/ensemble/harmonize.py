"""Ensemble members: load, bring to one opset and IR version, prefix names, share inputs.

Harmonizing N members for one graph:

- opset: every member goes to ``max_k opset_k`` of the default domain with onnx's version
  converter; other domains must already agree (there is no converter for them);
- IR version: ``max_k ir_k``;
- names: every tensor, node and initializer of member ``k`` becomes ``"<label>/<name>"``, in
  subgraphs too, except graph inputs: those keep one common (unprefixed) name, matched by name
  across members or renamed with an input map (``"b.pixels:input"``);
- checks: a shared input has one dtype and compatible shapes (same rank, static dims equal where
  both are static); the merged input takes the static dim where one member fixes it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from onnxopt.errors import ModelError, OptionError, first_line
from onnxopt.model import default_opset, load_model
from onnxopt.summary import value_info_dims

logger = logging.getLogger(__name__)


@dataclass
class Member:
    """One ensemble member after harmonization.

    Attributes:
        label: short unique name (file stem or ``m<k>``), the prefix of its tensors.
        source: where it came from, for reports.
        model: the member alone, converted to the common opset, with its original names.
        opset_from: its opset before conversion.
        inputs: original input name -> tensor name in the merged graph.
        outputs: original output name -> prefixed tensor name in the merged graph.
        graph: the prefixed graph (nodes, initializers) that goes into the merged graph.
    """

    label: str
    source: str
    model: onnx.ModelProto
    opset_from: int
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    graph: onnx.GraphProto | None = None
    #: the output the ensemble combines (see member_outputs.choose)
    scores: str = ""
    #: inputs shared with another member's input of another shape but as many elements per
    #: sample: input name -> the shape it is reshaped to (``[-1, *dims]``)
    reshapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        inits = {t.name for t in self.model.graph.initializer}
        return [v.name for v in self.model.graph.input if v.name not in inits]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.model.graph.output]

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        for v in list(self.model.graph.input) + list(self.model.graph.output):
            if v.name == name:
                return v
        raise OptionError(f"member '{self.label}' has no input or output '{name}'")


@dataclass
class Harmonized:
    """Members ready to be merged: one opset, one IR version, shared inputs decided."""

    members: list[Member]
    opset: int
    ir_version: int
    opset_imports: dict[str, int]
    inputs: list[onnx.ValueInfoProto]
    functions: list[onnx.FunctionProto]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading and labels


def load_members(models: Iterable[Any], labels: Iterable[str] | None = None) -> list[Member]:
    """Load each model (path, bytes or ModelProto) and give it a unique label."""
    members: list[Member] = []
    given = list(labels) if labels is not None else []
    models = list(models)
    if len(models) < 2:
        raise OptionError(f"merge needs at least two models, got {len(models)}")
    if given and len(given) != len(models):
        raise OptionError(f"{len(given)} labels for {len(models)} models")
    used: set[str] = set()
    for k, src in enumerate(models):
        model = load_model(src)
        if given:
            label = given[k]
        elif isinstance(src, (str, os.PathLike)):
            label = Path(os.fspath(src)).stem
        else:
            label = f"m{k}"
        label = re.sub(r"[^A-Za-z0-9_]+", "_", label) or f"m{k}"
        if label in used:
            label = f"{label}_{k}"
        used.add(label)
        where = os.fspath(src) if isinstance(src, (str, os.PathLike)) else label
        members.append(Member(label, str(where), model, default_opset(model)))
    return members


def find_member(members: list[Member], ref: str, what: str) -> tuple[Member, str]:
    """``"label.name"`` or ``"<index>.name"`` -> (member, name)."""
    for m in sorted(members, key=lambda m: -len(m.label)):
        if ref.startswith(m.label + "."):
            return m, ref[len(m.label) + 1 :]
    head, _, rest = ref.partition(".")
    if head.isdigit() and rest and int(head) < len(members):
        return members[int(head)], rest
    raise OptionError(
        f"{what} {ref!r}: expected MEMBER.NAME with MEMBER one of "
        f"{[m.label for m in members]} or an index"
    )


# --------------------------------------------------------------------------------------------
# Opset and IR version


def convert_opsets(members: list[Member]) -> tuple[int, int, dict[str, int], list[str]]:
    """Convert every member to the highest default-domain opset; returns (opset, ir, imports)."""
    notes: list[str] = []
    target = max(m.opset_from for m in members)
    for m in members:
        if m.opset_from == target:
            continue
        try:
            converted = version_converter.convert_version(m.model, target)
            onnx.checker.check_model(converted)
        except Exception as e:
            first = first_line(e)
            raise ModelError(
                f"member '{m.label}': cannot convert opset {m.opset_from} to {target} "
                f"({first}); export it at opset {target}"
            ) from e
        m.model = converted
        notes.append(f"member '{m.label}' converted from opset {m.opset_from} to {target}")
    imports: dict[str, int] = {"": target}
    for m in members:
        for o in m.model.opset_import:
            dom = "" if o.domain == "ai.onnx" else o.domain
            if dom == "":
                continue
            if dom in imports and imports[dom] != o.version:
                raise ModelError(
                    f"members disagree on the '{dom}' opset ({imports[dom]} vs {o.version} in "
                    f"'{m.label}'); only the default domain can be converted"
                )
            imports[dom] = o.version
    ir = max(m.model.ir_version for m in members)
    return target, ir, imports, notes


def merge_functions(members: list[Member]) -> list[onnx.FunctionProto]:
    """Model-local functions of all members; the same name must mean the same function."""
    out: dict[tuple[str, str, str], onnx.FunctionProto] = {}
    for m in members:
        for f in m.model.functions:
            key = (f.domain, f.name, getattr(f, "overload", ""))
            if key in out and out[key].SerializeToString() != f.SerializeToString():
                raise ModelError(
                    f"members define different local functions named '{f.domain}:{f.name}' "
                    f"('{m.label}' and another); rename one before merging"
                )
            out[key] = f
    return list(out.values())


# --------------------------------------------------------------------------------------------
# Shared inputs and shape checks


def describe(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    dims = "x".join(str(d) if isinstance(d, int) else "?" for d in value_info_dims(v))
    return f"{dt}[{dims}]"


def check_compatible(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto, what: str) -> None:
    """Same dtype, same rank, equal static dims, or a one-line OptionError naming ``what``."""
    ta, tb = a.type.tensor_type, b.type.tensor_type
    if ta.elem_type != tb.elem_type:
        raise OptionError(f"{what}: dtype mismatch, {describe(a)} vs {describe(b)}")
    da, db = value_info_dims(a), value_info_dims(b)
    if not ta.HasField("shape") or not tb.HasField("shape"):
        return
    if len(da) != len(db):
        raise OptionError(f"{what}: rank mismatch, {describe(a)} vs {describe(b)}")
    for i, (x, y) in enumerate(zip(da, db)):
        if isinstance(x, int) and isinstance(y, int) and x != y:
            raise OptionError(f"{what}: dim {i} differs, {describe(a)} vs {describe(b)}")


def value_info_like(
    name: str, elem: int, like: onnx.ValueInfoProto, drop_last: bool = False
) -> onnx.ValueInfoProto:
    """``like`` renamed to ``name`` with element type ``elem`` (and without its last dim)."""
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(like)
    vi.name = name
    vi.type.tensor_type.elem_type = elem
    if drop_last and vi.type.tensor_type.HasField("shape"):
        del vi.type.tensor_type.shape.dim[-1]
    return vi


def _merge_vi(name: str, a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(a)
    out.name = name
    if not a.type.tensor_type.HasField("shape"):
        out.type.tensor_type.shape.CopyFrom(b.type.tensor_type.shape)
        return out
    if b.type.tensor_type.HasField("shape"):
        for d, e in zip(out.type.tensor_type.shape.dim, b.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") and e.HasField("dim_value"):
                d.dim_value = e.dim_value
    return out


def plan_inputs(
    members: list[Member],
    input_map: Mapping[str, str] | Iterable[str] | None,
    bound: Mapping[tuple[str, str], str],
    positional: bool,
) -> tuple[list[onnx.ValueInfoProto], list[str]]:
    """Decide the merged graph's inputs and fill ``member.inputs``.

    Args:
        members: the members.
        input_map: ``{"b.pixels": "input"}`` or ``["b.pixels:input"]``: member input -> merged name.
        bound: (label, input) -> tensor name for inputs fed by another member (serial mode).
        positional: when every member has one input and names differ, share it by position.
    """
    notes: list[str] = []
    explicit: dict[tuple[str, str], str] = {}
    for key, target in _pairs(input_map, "--input-map"):
        m, name = find_member(members, key, "--input-map")
        if name not in m.input_names:
            raise OptionError(
                f"--input-map {key}: member '{m.label}' has no input '{name}' "
                f"(inputs: {m.input_names})"
            )
        explicit[(m.label, name)] = target
    if positional and not explicit and all(len(m.input_names) == 1 for m in members):
        names = {m.input_names[0] for m in members}
        if len(names) > 1:
            first = members[0].input_names[0]
            for m in members[1:]:
                explicit[(m.label, m.input_names[0])] = first
            notes.append(f"members have one input each: shared by position as '{first}'")
    merged: dict[str, onnx.ValueInfoProto] = {}
    owner: dict[str, str] = {}
    for m in members:
        m.inputs = {}
        for name in m.input_names:
            if (m.label, name) in bound:
                m.inputs[name] = bound[(m.label, name)]
                continue
            target = explicit.get((m.label, name), name)
            vi = m.value_info(name)
            if target in merged:
                what = f"shared input '{target}' ('{owner[target]}' vs '{m.label}.{name}')"
                spec = reshape_spec(merged[target], vi)
                if spec is not None:
                    m.reshapes[name] = spec
                    notes.append(f"{what}: reshaped to {spec} for '{m.label}'")
                else:
                    check_compatible(merged[target], vi, what)
                    merged[target] = _merge_vi(target, merged[target], vi)
            else:
                merged[target] = _merge_vi(target, vi, vi)
                owner[target] = f"{m.label}.{name}"
            m.inputs[name] = target
    return list(merged.values()), notes


def reshape_spec(shared: onnx.ValueInfoProto, vi: onnx.ValueInfoProto) -> list[int] | None:
    """``[-1, *dims]`` when ``vi`` differs from ``shared`` in shape only and both hold as many
    elements per sample (static dims after the batch axis), else None (an image model sharing
    a flat feature vector: ``[N, 64]`` and ``[N, 1, 8, 8]``)."""
    ta, tb = shared.type.tensor_type, vi.type.tensor_type
    if ta.elem_type != tb.elem_type or not ta.HasField("shape") or not tb.HasField("shape"):
        return None
    da, db = value_info_dims(shared), value_info_dims(vi)
    if da == db or len(da) < 1 or len(db) < 1:
        return None
    rest_a, rest_b = da[1:], db[1:]
    if not all(isinstance(d, int) for d in rest_a + rest_b):
        return None
    if int(np.prod(rest_a)) != int(np.prod(rest_b)):
        return None
    if isinstance(da[0], int) and isinstance(db[0], int) and da[0] != db[0]:
        return None
    return [-1, *rest_b]


def _pairs(spec: Mapping[str, str] | Iterable[str] | None, what: str) -> list[tuple[str, str]]:
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return [(str(k), str(v)) for k, v in spec.items()]
    out = []
    for item in spec:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                raise OptionError(f"{what} {part!r}: expected FROM:TO")
            a, b = part.rsplit(":", 1)
            out.append((a.strip(), b.strip()))
    return out


def parse_pairs(spec: Mapping[str, str] | Iterable[str] | None, what: str) -> list[tuple[str, str]]:
    """``["a.out:b.in", ...]`` or ``{"a.out": "b.in"}`` -> list of pairs."""
    return _pairs(spec, what)


# --------------------------------------------------------------------------------------------
# Prefixing


def prefixed_graph(m: Member) -> onnx.GraphProto:
    """The member's graph with every name prefixed by ``label/`` and inputs mapped."""
    prefix = m.label + "/"
    inputs = dict(m.inputs)

    def rename(name: str) -> str:
        if not name:
            return name
        if name in inputs and name not in m.reshapes:
            return inputs[name]
        return prefix + name

    g = onnx.GraphProto()
    g.CopyFrom(m.model.graph)
    inits = {t.name for t in g.initializer}
    keep_inputs = [v for v in g.input if v.name in inits]  # IR<4 style initializer inputs
    del g.input[:]
    g.input.extend(keep_inputs)
    rename_graph(g, rename)
    for k, (name, spec) in enumerate(m.reshapes.items()):
        shape = f"{prefix}{name}__shape"
        g.initializer.append(onnx.numpy_helper.from_array(np.array(spec, np.int64), shape))
        node = onnx.helper.make_node(
            "Reshape", [inputs[name], shape], [prefix + name], name=f"{prefix}{name}__reshape"
        )
        g.node.insert(k, node)
    m.outputs = {o: prefix + o for o in m.output_names}
    return g


def rename_graph(g: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """Apply ``rename`` to every tensor and node name of ``g`` and its subgraphs, in place."""
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = rename(v.name)
    for t in g.initializer:
        t.name = rename(t.name)
    for st in g.sparse_initializer:
        st.values.name = rename(st.values.name)
        st.indices.name = rename(st.indices.name)
    for n in g.node:
        rename_node(n, rename)
        if n.name:
            n.name = rename(n.name)


def rename_node(n: onnx.NodeProto, rename: Callable[[str], str]) -> None:
    """Rename a node's inputs and outputs, and every name inside its subgraph attributes."""
    for i, x in enumerate(n.input):
        n.input[i] = rename(x)
    for i, x in enumerate(n.output):
        n.output[i] = rename(x)
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            rename_graph(a.g, rename)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sg in a.graphs:
                rename_graph(sg, rename)


def rename_refs(n: onnx.NodeProto, alias: Mapping[str, str]) -> None:
    """Rewrite the tensors ``n`` reads (also from inside its subgraphs) through ``alias``."""
    for i, x in enumerate(n.input):
        if x in alias:
            n.input[i] = alias[x]
    for a in n.attribute:
        sgs = (
            [a.g]
            if a.type == onnx.AttributeProto.GRAPH
            else (list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
        )
        for sg in sgs:
            for sn in sg.node:
                rename_refs(sn, alias)
            for o in sg.output:
                if o.name in alias:
                    o.name = alias[o.name]
