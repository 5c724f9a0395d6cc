"""dedup-initializers: merge initializers with the same dtype, shape and bytes.

Candidates are the constants of every scope (the main graph and the If/Loop/Scan bodies),
grouped by ``(dtype, shape, nbytes)`` and then by a SHA-1 of the bytes. The outermost one of a
group stays and every use of the others is routed to it, including uses inside bodies; an
inner constant read where the kept one is not visible (a sibling body) is left alone.
Overridable initializers (also graph inputs) and initializers that are graph outputs are left
alone.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import peek_values as _peek
from onnxopt.graph import replace_uses, subgraphs
from onnxopt.scopes import OVERRIDABLE, mark, owner_of, walk

logger = logging.getLogger(__name__)


def _nbytes(t: gs.Constant) -> int:
    n = int(np.prod(t.shape)) if len(t.shape) else 1
    return n * np.dtype(t.dtype).itemsize


def _digest(values: np.ndarray) -> str:
    if values.dtype == object:
        return hashlib.sha1(repr(values.tolist()).encode()).hexdigest()
    return hashlib.sha1(np.ascontiguousarray(values).tobytes()).hexdigest()


def _constants(graph: gs.Graph) -> tuple[list[gs.Constant], dict[int, list[tuple]]]:
    """Every constant of every scope that is neither a graph input (overridable) nor a
    graph's output, in scope order, and the paths of the graphs that read each."""
    out: list[gs.Constant] = []
    uses: dict[int, list[tuple]] = {}
    excluded: set[int] = set()
    for path, g in walk(graph):
        excluded.update(id(t) for t in g.inputs + g.outputs)
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                if id(t) not in uses:
                    out.append(t)
                uses.setdefault(id(t), []).append(path)
    defaults = mark(graph, OVERRIDABLE) or set()  # initializers a caller may override
    return [t for t in out if id(t) not in excluded and t.name not in defaults], uses


class DedupInitializers(Pass):
    """Identical initializers merged into one."""

    name = "dedup-initializers"
    exact = True
    summary = "merge identical initializers (dtype, shape, bytes)"
    tags = ("cleanup",)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        consts, uses = _constants(graph)
        owner = owner_of(graph)
        # the outermost of equal constants is kept: it is visible wherever the others are read
        consts.sort(key=lambda t: len(owner(t)))
        by_meta: dict[tuple, list[gs.Constant]] = {}
        for t in consts:
            try:
                export = str(t.export_dtype) if getattr(t, "export_dtype", None) is not None else ""
                meta = (str(t.dtype), export, tuple(t.shape), _nbytes(t))
            except Exception:
                continue
            by_meta.setdefault(meta, []).append(t)
        sites: list[str] = []
        saved = 0
        subs = subgraphs(graph)  # replacing uses adds and removes no node
        for group in by_meta.values():
            if len(group) < 2:
                continue
            # a strided sample tells most same-shape weights apart without hashing all bytes
            samples: dict[bytes, int] = {}
            keys = []
            for t in group:
                v = _peek(t).ravel()
                keys.append(v[:: max(1, v.size // 64)].tobytes() if v.dtype != object else b"")
                samples[keys[-1]] = samples.get(keys[-1], 0) + 1
            first_of: dict[str, gs.Constant] = {}
            for t, key in zip(group, keys):
                if samples[key] < 2:
                    continue  # no other initializer shares even the sample
                values = _peek(t)
                d = _digest(values)
                keep = first_of.setdefault(d, t)
                if keep is t or not ctx.allow(t.name):
                    continue
                where = owner(keep)
                if any(p[: len(where)] != where for p in uses[id(t)]):
                    continue  # read in a body that cannot see the kept one

                if not np.array_equal(_peek(keep), values, equal_nan=values.dtype.kind in "fc"):
                    continue  # a hash collision (or NaN payloads): leave both
                replace_uses(graph, t, keep, subs)
                saved += int(values.nbytes)
                sites.append(t.name)
        notes = [f"{len(sites)} duplicate initializers merged ({saved} bytes)"] if sites else []
        return PassResult(
            changed=bool(sites),
            rewrites=len(sites),
            notes=notes,
            sites=sites,
            details={"bytes_saved": saved},
        )
