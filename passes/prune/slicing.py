"""Apply a pruning plan: slice every member array and rewrite every member shape entry.

For each group with kept units ``K`` (raw channels ``R = {u·block + j}``), a member with span
starting at ``offset`` along ``axis`` keeps entries ``offset + r·expand + e`` for ``r`` in ``R``
(or in ``K`` when the axis counts units). Members of several groups on one axis (a consumer after
a Concat) write into one mask per ``(node, input, axis)``. Each sliced array becomes a new
initializer, so a weight shared with another node is never changed under it; readers of one
shared weight sliced alike share the slice.
A Reshape entry (a Split size, a Slice start or end) drops by (removed channels or units) ×
expand; a grouped conv's ``group`` (a GroupNormalization's ``num_groups``) drops by the removed
channels / the channels per group (the member's ``expand``).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_graph_input, is_graph_output, unique_name

from .groups import Analysis

logger = logging.getLogger(__name__)


def removed_entries(analysis: Analysis, gid: int, kept_units: np.ndarray, unit: bool) -> np.ndarray:
    """Indices (units or raw channels) removed from group ``gid``."""
    g = analysis.group(gid)
    if unit:
        return np.setdiff1d(np.arange(g.units), kept_units)
    return np.setdiff1d(np.arange(g.size), g.raw_keep(kept_units))


def plan_masks(analysis: Analysis, kept: dict[int, np.ndarray]) -> tuple[dict, dict, dict]:
    """Masks per (node, input, axis), shape decrements per (node, input, elem), group-count
    decrements per node."""
    removal: dict[tuple[str, int, int], list[np.ndarray]] = defaultdict(list)
    shape_dec: dict[tuple[str, int, int], int] = defaultdict(int)
    group_dec: dict[str, int] = defaultdict(int)
    for gid, units in kept.items():
        g = analysis.group(gid)
        if len(units) == g.units:
            continue
        for m in g.members:
            gone = removed_entries(analysis, gid, units, m.unit)
            if m.kind == "shape":
                shape_dec[(m.node, m.index, m.axis)] += len(gone) * m.expand
            elif m.kind == "group":
                group_dec[m.node] += len(gone) // m.expand
            else:
                pos = m.offset + gone[:, None] * m.expand + np.arange(m.expand)[None, :]
                removal[(m.node, m.index, m.axis)].append(pos.reshape(-1))
    return removal, shape_dec, group_dec


def apply_plan(graph: gs.Graph, analysis: Analysis, kept: dict[int, np.ndarray]) -> dict:
    """Slice ``graph`` in place; returns {(node, input): kept-index per axis} for later steps."""
    removal, shape_dec, group_dec = plan_masks(analysis, kept)
    nodes = {n.name: n for n in graph.nodes}
    taken = set(graph.tensors().keys())
    per_input: dict[tuple[str, int], dict[int, np.ndarray]] = defaultdict(dict)
    for (name, idx, axis), parts in removal.items():
        per_input[(name, idx)][axis] = np.unique(np.concatenate(parts))
    kept_index: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    made: dict[tuple, gs.Constant] = {}  # one slice of a shared weight serves every reader
    for (name, idx), axes in per_input.items():
        node = nodes[name]
        src = node.inputs[idx]
        arr = const_value(src)
        keep_ax = {}
        for axis, gone in axes.items():
            keep_ax[axis] = np.setdiff1d(np.arange(arr.shape[axis]), gone)
        kept_index[(name, idx)] = keep_ax
        key = (src.name, tuple((a, k.tobytes()) for a, k in sorted(keep_ax.items())))
        if key in made:
            node.inputs[idx] = made[key]
            continue
        for axis, keep in keep_ax.items():
            arr = np.take(arr, keep, axis=axis)
        _set_input(node, idx, arr, taken)
        made[key] = node.inputs[idx]
    for (name, idx, elem), dec in shape_dec.items():
        node = nodes[name]
        arr = const_value(node.inputs[idx]).copy()
        flat = arr.reshape(-1)
        flat[elem] -= dec
        if flat[elem] <= 0:
            raise ValueError(f"shape entry {elem} of {name} would become {flat[elem]}")
        _set_input(node, idx, flat.reshape(arr.shape), taken)
    for name, dec in group_dec.items():
        node = nodes[name]
        attr = "num_groups" if node.op == "GroupNormalization" else "group"
        node.attrs[attr] = int(node.attrs[attr]) - dec
    for t in graph.tensors().values():
        if (
            isinstance(t, gs.Variable)
            and not is_graph_input(graph, t)
            and not is_graph_output(graph, t)
        ):
            t.shape = None
    return kept_index


def _set_input(node: gs.Node, idx: int, arr: np.ndarray, taken: set[str]) -> None:
    base = node.inputs[idx].name or f"{node.name}_in{idx}"
    name = unique_name(None, f"{base}_pruned", taken)  # type: ignore[arg-type]
    taken.add(name)
    node.inputs[idx] = gs.Constant(name, np.array(arr, order="C", copy=True))
