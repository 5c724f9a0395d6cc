"""Scopes of a model with If / Loop / Scan bodies, over onnx-graphsurgeon graphs.

A body is named by the path of (node, attribute) pairs that leads to it:
``Loop_3.body::If_0.then_branch``; a site inside it is keyed ``<scope>::<site>``.

**Where a subgraph's initializers live** (:func:`place_initializers`, after every export).
onnx-graphsurgeon writes every constant a body reads into that body's initializers, copying
outer weights into each body that reads them (shadowing the outer name). Here each constant
is written once: in the main graph when it is read there, is a model input's default or is
mapped (see :mod:`onnxopt.weights`), else in the innermost graph enclosing every reader.

A body being rewritten knows its parent (:data:`PARENT`) and every name of the model
(:data:`TAKEN`): see :mod:`onnxopt.subgraphs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import onnx
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

#: attribute of a body gs.Graph: the graph that holds its node
PARENT = "onnxopt_parent"
#: attribute of an imported main gs.Graph: names of initializers that are also graph inputs
OVERRIDABLE = "onnxopt_overridable"
#: attribute of a body gs.Graph: every tensor name of the model (for unique names)
TAKEN = "onnxopt_taken"
SEP = "::"

Path = tuple[tuple[str, str], ...]


def scope_name(path: Path) -> str:
    return SEP.join(f"{node}.{attr}" for node, attr in path)


def site_key(scope: str, key: str) -> str:
    return f"{scope}{SEP}{key}" if scope else key


def walk(graph: gs.Graph, path: Path = ()) -> Iterator[tuple[Path, gs.Graph]]:
    """``(path, graph)`` for ``graph`` and every body inside it, outer ones first."""
    yield path, graph
    for node in graph.nodes:
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                yield from walk(value, path + ((node.name, attr),))


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    return [g for _, g in walk(graph)]


def has_bodies(graph: gs.Graph) -> bool:
    return any(isinstance(a, gs.Graph) for n in graph.nodes for a in n.attrs.values())


def mark(graph: object, name: str) -> object:
    """An onnxopt attribute set on a gs.Graph, or None (gs resolves unknown attribute names
    as op functions, so ``getattr`` is not usable)."""
    d = getattr(graph, "__dict__", None)
    return d.get(name) if d else None


def is_outer(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` belongs to an enclosing scope of the body ``graph`` (False for the
    main graph, whose tensors are all its own)."""
    if mark(graph, PARENT) is None or isinstance(tensor, gs.Constant):
        return False
    if any(t is tensor for t in graph.inputs):
        return False
    return not any(t is tensor for n in graph.nodes for t in n.outputs)


# ----------------------------------------------------------------------- owner of constants


def _owners(graph: gs.Graph) -> tuple[dict[int, gs.Constant], dict[int, Path]]:
    """Every constant of the model and the path of the graph that should hold it."""
    uses: dict[int, list[Path]] = {}
    consts: dict[int, gs.Constant] = {}
    for path, g in walk(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                consts[id(t)] = t
                uses.setdefault(id(t), []).append(path)
    owner: dict[int, Path] = {}
    keep = mark(graph, OVERRIDABLE) or set()
    for key, paths in uses.items():
        c = consts[key]
        if () in paths or c.name in keep or type(c._values).__name__ == "MappedValues":
            owner[key] = ()
        else:
            owner[key] = _common_prefix(paths)
    return consts, owner


def _common_prefix(paths: list[Path]) -> Path:
    first = paths[0]
    n = len(first)
    for p in paths[1:]:
        n = min(n, len(p))
        for i in range(n):
            if p[i] != first[i]:
                n = i
                break
    return first[:n]


def owner_of(graph: gs.Graph) -> Callable[[gs.Constant], Path]:
    """A function giving the path of the graph that holds a constant (see the module doc)."""
    _, owner = _owners(graph)
    return lambda c: owner.get(id(c), ())


def _proto_bodies(node: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}


def _walk_pair(
    g: gs.Graph, p: onnx.GraphProto, path: Path = ()
) -> Iterator[tuple[Path, gs.Graph, onnx.GraphProto]]:
    yield path, g, p
    for node, pnode in zip(g.nodes, p.node):
        bodies = _proto_bodies(pnode)
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph) and attr in bodies:
                yield from _walk_pair(value, bodies[attr], path + ((node.name, attr),))


def place_initializers(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Rewrite the exported ``proto`` so that each constant is an initializer of one graph:
    the main graph when it is read there (or mapped), else the innermost graph enclosing every
    reader. ``graph`` is the gs graph it was exported from."""
    if not has_bodies(graph):
        return
    consts, owner = _owners(graph)
    by_name: dict[str, onnx.TensorProto] = {}
    pairs = list(_walk_pair(graph, proto))
    for _, _, p in pairs:
        for t in p.initializer:
            by_name.setdefault(t.name, t)
    for path, _, p in pairs:
        wanted = [c.name for k, c in consts.items() if owner[k] == path and c.name in by_name]
        have = [t.name for t in p.initializer]
        if have == wanted:
            continue
        keep = {t.name: t for t in p.initializer}
        new = [onnx.TensorProto() for _ in wanted]
        for t, name in zip(new, wanted):
            t.CopyFrom(keep.get(name) or by_name[name])
        del p.initializer[:]
        p.initializer.extend(new)


def outer_reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors of enclosing scopes that ``node``'s bodies read (each once)."""
    out: dict[int, gs.Tensor] = {}

    def visit(g: gs.Graph, defined: set[int]) -> None:
        local = defined | {id(t) for t in g.inputs}
        local |= {id(t) for n in g.nodes for t in n.outputs}
        for n in g.nodes:
            for t in n.inputs:
                if id(t) not in local and t.name:
                    out.setdefault(id(t), t)
            for a in n.attrs.values():
                if isinstance(a, gs.Graph):
                    visit(a, local)

    for a in node.attrs.values():
        if isinstance(a, gs.Graph):
            visit(a, set())
    return list(out.values())
