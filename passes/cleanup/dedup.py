"""dedup-initializers: merge initializers with the same dtype, shape and bytes.

Candidates are grouped by ``(dtype, shape, nbytes)`` and then by a SHA-1 of the bytes; the first
initializer of a group (in graph order) stays and every use of the others is routed to it,
including uses inside subgraphs. Overridable initializers (also graph inputs) and initializers
that are graph outputs are left alone.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import is_graph_input, is_graph_output, replace_uses, subgraphs

logger = logging.getLogger(__name__)


def _peek(t: gs.Constant) -> np.ndarray:
    """``t``'s values without loading them into the graph.

    An unloaded constant keeps its original TensorProto, which the export reuses as it is;
    once loaded it must be re-encoded from the array (~1 s per export on a 400 MB model).
    """
    lazy = t._values
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        return np.asarray(lazy.load())
    return np.asarray(t.values)


def _nbytes(t: gs.Constant) -> int:
    n = int(np.prod(t.shape)) if len(t.shape) else 1
    return n * np.dtype(t.dtype).itemsize


def _digest(values: np.ndarray) -> str:
    if values.dtype == object:
        return hashlib.sha1(repr(values.tolist()).encode()).hexdigest()
    return hashlib.sha1(np.ascontiguousarray(values).tobytes()).hexdigest()


class DedupInitializers(Pass):
    """Identical initializers merged into one."""

    name = "dedup-initializers"
    exact = True
    summary = "merge identical initializers (dtype, shape, bytes)"
    tags = ("cleanup",)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        consts = [
            t
            for t in graph.tensors().values()
            if isinstance(t, gs.Constant)
            and not is_graph_input(graph, t)
            and not is_graph_output(graph, t)
        ]
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
