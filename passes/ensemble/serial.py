"""Serial mode: ``--io-map A.out:B.in`` chains members into one graph.

Member B's input ``in`` is bound to member A's prefixed output ``A/out`` (same dtype, same
rank, equal static dims, checked up front); members are ordered so producers come first (a
cycle is refused). The merged graph's outputs are the member outputs no io-map consumes,
under their own names when unique.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.context import MergeContext, Reference
from onnxopt.passes.ensemble.cse import resolve
from onnxopt.passes.ensemble.harmonize import (
    Member,
    check_compatible,
    find_member,
    parse_pairs,
    value_info_like,
)
from onnxopt.passes.ensemble.modes import Head
from onnxopt.runner import Runs


def plan_serial(
    members: list[Member], io_map: Any
) -> tuple[list[Member], dict[tuple[str, str], str], list[str]]:
    """Members in dependency order, the bound inputs ``(label, input) -> "a/out"``, notes.

    Without ``io_map``, one-input one-output members are chained in the given order.
    """
    pairs = parse_pairs(io_map, "--io-map")
    notes = []
    if not pairs:
        if not all(len(m.input_names) == 1 and len(m.output_names) == 1 for m in members):
            raise OptionError(
                "--mode serial needs --io-map A.out:B.in (members have several inputs or outputs)"
            )
        pairs = [
            (f"{a.label}.{a.output_names[0]}", f"{b.label}.{b.input_names[0]}")
            for a, b in zip(members, members[1:])
        ]
        notes.append(
            "chained members in the given order: " + ", ".join(f"{a}->{b}" for a, b in pairs)
        )
    bound: dict[tuple[str, str], str] = {}
    deps: dict[str, set[str]] = {m.label: set() for m in members}
    for src, dst in pairs:
        a, out = find_member(members, src, "--io-map")
        b, inp = find_member(members, dst, "--io-map")
        if out not in a.output_names:
            raise OptionError(
                f"--io-map {src}: '{a.label}' has no output '{out}' (outputs: {a.output_names})"
            )
        if inp not in b.input_names:
            raise OptionError(
                f"--io-map {dst}: '{b.label}' has no input '{inp}' (inputs: {b.input_names})"
            )
        if a is b:
            raise OptionError(f"--io-map {src}:{dst} feeds a member into itself")
        check_compatible(a.value_info(out), b.value_info(inp), f"--io-map {src}:{dst}")
        bound[(b.label, inp)] = f"{a.label}/{out}"
        deps[b.label].add(a.label)
    order, done = [], set()
    while len(order) < len(members):
        ready = [m for m in members if m.label not in done and deps[m.label] <= done]
        if not ready:
            raise OptionError("--io-map makes a cycle between members")
        order.append(ready[0])
        done.add(ready[0].label)
    return order, bound, notes


def serial_outputs(ctx: MergeContext, head: Head) -> tuple[list[onnx.ValueInfoProto], Reference]:
    """The merged graph's outputs (member outputs no io-map consumes, as Identity taps) and the
    reference: the members run one after another, each fed what its producers returned."""
    consumed = set(bound_sources(ctx.members))
    kept = [
        (m, name)
        for m in ctx.members
        for name in m.output_names
        if f"{m.label}/{name}" not in consumed
    ]
    counts: dict[str, int] = {}
    for _, name in kept:
        counts[name] = counts.get(name, 0) + 1
    inputs = {n for m in ctx.members for n in m.inputs.values()}
    out_vis, mapping = [], []
    for m, name in kept:
        final = name if counts[name] == 1 and name not in inputs else f"{m.label}/{name}:out"
        head.op("Identity", [resolve(ctx.alias, f"{m.label}/{name}")], out=final)
        out_vis.append(
            value_info_like(
                final, m.value_info(name).type.tensor_type.elem_type, m.value_info(name)
            )
        )
        mapping.append((m.label, name, final))
    if ctx.config.data is not None:
        ctx.eval_feeds = ctx.load_feeds(ctx.config.data, False, "--data")
    source = {f"{m.label}/{n}": (m.label, n) for m in ctx.members for n in m.output_names}

    def reference(_member_runs: Any, feeds: Feeds) -> Runs:
        produced: list[dict[tuple[str, str], np.ndarray]] = [{} for _ in feeds.runs]
        for m in ctx.members:
            fm = []
            for i, run in enumerate(feeds.runs):
                fm.append(
                    {
                        k: produced[i][source[v]] if v in source else run[v]
                        for k, v in m.inputs.items()
                    }
                )
            for i, r in enumerate(ctx.runner.run(m.model, Feeds(fm))):
                for k, v in r.items():
                    produced[i][(m.label, k)] = v
        return [{final: p[(lab, name)] for lab, name, final in mapping} for p in produced]

    return out_vis, reference


def bound_sources(members: list[Member]) -> list[str]:
    """Prefixed member outputs that feed another member's input."""
    outs = {f"{m.label}/{n}" for m in members for n in m.output_names}
    return [v for m in members for v in m.inputs.values() if v in outs]
