"""Channel importance, aggregated over each coupled group.

- ``l1`` / ``l2``: the norm of each output channel's weights, ``s_c = ‖W[c]‖_p``, over every
  producer in the group;
- ``bn-scale``: ``|γ_c|`` of every BatchNormalization in the group (Network Slimming);
- ``activation`` (Wanda-style, needs data): for every consumer of the group,
  ``s_c = Σ_e ‖W[:, e]‖₂ · ‖X_e‖₂`` over the entries ``e`` of channel ``c`` (``‖X_e‖₂`` over all
  samples and positions), i.e. how much channel ``c`` contributes to what its consumers compute.

Each member's scores are divided by their mean before summing, so no layer dominates a group by
the scale of its weights; a unit's score (a head) is the sum over its ``block`` raw channels.
"""

from __future__ import annotations

import numpy as np

from onnxopt.graph import const_value

from .groups import Analysis
from .layout import Group, Member

METHODS = ("l1", "l2", "bn-scale", "activation")


def _span_rows(arr: np.ndarray, m: Member, g: Group) -> np.ndarray:
    """Rows (entries of the member's span along its axis) x rest."""
    span = g.span(m.unit, m.expand)
    moved = np.moveaxis(np.asarray(arr, dtype=np.float64), m.axis, 0)[m.offset : m.offset + span]
    return moved.reshape(span, -1)


def _to_raw(entry_scores: np.ndarray, m: Member, g: Group) -> np.ndarray:
    per = entry_scores.reshape(-1, m.expand).sum(axis=1)
    if m.unit:  # per unit -> spread over its raw channels
        per = np.repeat(per / g.block, g.block)
    return per


def _norm(x: np.ndarray) -> np.ndarray:
    mean = float(np.mean(x))
    return x / mean if mean > 0 else np.ones_like(x)


def group_scores(
    analysis: Analysis, method: str, act_norms: dict[str, np.ndarray] | None = None
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Unit scores for every open group; returns (scores by root gid, notes)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    notes: list[str] = []
    out: dict[int, np.ndarray] = {}
    fallback = 0
    for gid, g in analysis.groups.items():
        if not g.prunable:
            continue
        raw = np.zeros(g.size)
        used = 0
        for m in g.members:
            node = nodes[m.node]
            if m.kind in ("shape", "group"):
                continue
            arr = const_value(node.inputs[m.index])
            if method in ("l1", "l2") and m.kind == "out":
                rows = _span_rows(arr, m, g)
                s = np.abs(rows).sum(1) if method == "l1" else np.sqrt((rows**2).sum(1))
            elif method == "bn-scale" and node.op == "BatchNormalization" and m.index == 1:
                s = np.abs(_span_rows(arr, m, g)[:, 0])
            elif method == "activation" and m.kind == "in" and act_norms and m.node in act_norms:
                rows = _span_rows(arr, m, g)
                x = act_norms[m.node][m.offset : m.offset + rows.shape[0]]
                s = np.sqrt((rows**2).sum(1)) * x
            else:
                continue
            raw += _norm(_to_raw(s, m, g))
            used += 1
        if used == 0:  # e.g. no BN in the group, or no consumer with recorded activations
            fallback += 1
            for m in g.members:
                if m.kind == "out":
                    rows = _span_rows(const_value(nodes[m.node].inputs[m.index]), m, g)
                    raw += _norm(np.sqrt((rows**2).sum(1)))
        out[gid] = raw.reshape(g.units, g.block).sum(1)
    if fallback and method != "l2":
        notes.append(
            f"importance {method}: {fallback} group(s) had nothing to score it by; "
            f"used l2 of the producers' weights"
        )
    return out, notes
