"""Applying fusion rules to a graph: sweep the nodes, match, check, rewrite, until nothing
changes; count rewrites per rule, keep the sites (for bisection) and the decline notes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from onnxopt.graph import node_names_unique
from onnxopt.passes.fusion.pattern import (
    MAX_NOTES,
    Match,
    Rule,
    exclusive,
    inputs_outside,
    match_at,
)

logger = logging.getLogger(__name__)


@dataclass
class RuleStats:
    """What :func:`apply_rules` did: counts per rule, site keys and decline notes."""

    counts: dict[str, int] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_notes: int = 0

    def note(self, text: str) -> None:
        if text in self.notes:
            return
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        else:
            self.dropped_notes += 1

    @property
    def rewrites(self) -> int:
        return sum(self.counts.values())


def apply_rules(
    graph: gs.Graph, rules: Sequence[Rule], ctx: Any, *, max_sweeps: int = 8
) -> RuleStats:
    """Apply ``rules`` to ``graph`` until nothing changes (or ``max_sweeps``).

    Args:
        graph: the graph, edited in place.
        rules: rules tried in order at every node.
        ctx: the PassContext (``ctx.allow``, ``ctx.target``).
        max_sweeps: bound on repeated sweeps (rewrites can enable other rewrites).

    Returns:
        RuleStats with per-rule counts, rewritten site keys and decline notes.
    """
    stats = RuleStats()
    target = getattr(ctx, "target", "onnx")
    active = [r for r in rules if not (r.contrib and target != "onnxruntime")]
    if not active:
        return stats
    node_names_unique(graph)
    sweep = _Sweep(graph, active, ctx, stats)
    for _ in range(max_sweeps):
        if not sweep.run():
            break
        graph.cleanup(remove_unused_graph_inputs=False)
        node_names_unique(graph)
    if stats.dropped_notes:
        stats.notes.append(f"... and {stats.dropped_notes} more declined matches")
    return stats


class _Sweep:
    """One pass over the graph's nodes, trying the rules whose root op matches each node."""

    def __init__(self, graph: gs.Graph, rules: list[Rule], ctx: Any, stats: RuleStats) -> None:
        self.graph, self.ctx, self.stats = graph, ctx, stats
        self.opset = int(graph.opset or 0)
        self.by_op: dict[str, list[Rule]] = {}
        for rule in rules:
            for op in rule.root_ops():
                self.by_op.setdefault(op, []).append(rule)
        self.opset_noted: set[str] = set()

    def run(self) -> bool:
        """Rewrite at most one rule per node; True when something changed."""
        self.graph.toposort()
        dead: set[int] = set()
        changed = False
        for node in list(self.graph.nodes):
            if id(node) in dead or not node.outputs:
                continue
            for rule in self.by_op.get(node.op, ()):
                matched = self._try(rule, node)
                if matched is not None:
                    dead.update(id(n) for n in matched)
                    changed = True
                    break
        return changed

    def _try(self, rule: Rule, node: gs.Node) -> list[gs.Node] | None:
        """Match, check and rewrite ``rule`` at ``node``; the matched nodes if it rewrote."""
        m = _first_match(rule, node)
        if m is None:
            return None
        key = node.name
        if rule.min_opset and self.opset < rule.min_opset:
            if rule.name not in self.opset_noted:
                self.opset_noted.add(rule.name)
                self.stats.note(
                    f"{rule.name}: needs opset >= {rule.min_opset}, model has "
                    f"{self.opset}; not rewritten (no silent opset change)"
                )
            return None
        res = inputs_outside(m)
        if res:
            res = exclusive(self.graph, m)
        if res:
            res = rule.check(self.graph, m)
        if not res:
            if not res.silent:
                self.stats.note(f"{rule.name} at '{key}': {res.reason}")
            return None
        if not self.ctx.allow(key):
            return None
        matched = list(m.matched)
        rule.rewrite(self.graph, m)
        self.stats.counts[rule.name] = self.stats.counts.get(rule.name, 0) + 1
        self.stats.sites.append(key)
        logger.debug("%s rewrote %s", rule.name, key)
        return matched


def _first_match(rule: Rule, node: gs.Node) -> Match | None:
    for i, pat in enumerate(rule.patterns):
        if node.op in pat.ops:
            m = match_at(pat, node)
            if m is not None:
                m.pattern_index = i
                return m
    return None


def rules_pass_result(stats: RuleStats) -> Any:
    """Turn RuleStats into a PassResult (details carry the per-rule counts)."""
    from onnxopt.contract import PassResult

    return PassResult(
        changed=stats.rewrites > 0,
        rewrites=stats.rewrites,
        notes=stats.notes,
        sites=stats.sites,
        details={"counts": dict(stats.counts)},
    )


# ---- small value predicates shared by rules -------------------------------------------------
