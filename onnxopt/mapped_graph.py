"""Mapped weights inside onnx-graphsurgeon graphs: an imported constant whose tensor is
memory-mapped (:mod:`onnxopt.weights`) keeps a view of the mapping instead of a copy, and on
export a large new constant is spilled once to the scratch file and written as a stub. Kept
apart from :mod:`onnxopt.graph`, which calls :func:`adopt_mapped` on import and
:func:`prepare_mapped` before export."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import weights
from onnxopt.scopes import all_graphs

#: attribute of an imported gs.Graph: whether its model held mapped weights (onnxopt.weights)
MAPPED = "onnxopt_mapped"


class MappedValues(gs.ir.tensor.LazyValues):
    """The values of a mapped initializer: loading them gives a read-only view of the file's
    mapping (no copy), and an unloaded one is exported as its stub."""

    def load(self) -> np.ndarray:
        return weights.array(self.tensor)


def _constants(graph: gs.Graph):
    seen: set[int] = set()
    for g in all_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


def adopt_mapped(graph: gs.Graph) -> None:
    found = False
    for t in _constants(graph):
        lazy = t._values
        if isinstance(lazy, gs.ir.tensor.LazyValues) and weights.is_mapped(lazy.tensor):
            t._values = MappedValues(lazy.tensor)
            t.data_location = None
            found = True
    setattr(graph, MAPPED, found)


def prepare_mapped(graph: gs.Graph) -> None:
    """Before export: a constant whose values are a view of a mapping is exported as a stub of
    that view, and a large new one is spilled once to the scratch file (see weights)."""
    if not vars(graph).get(MAPPED):
        return
    for t in _constants(graph):
        arr = t._values
        if isinstance(arr, gs.ir.tensor.LazyValues) or not isinstance(arr, np.ndarray):
            continue
        if t.export_dtype is not None and np.dtype(t.export_dtype) != arr.dtype:
            continue
        if arr.dtype.kind in "OSUV" or arr.nbytes < weights.MAP_MIN_TENSOR_BYTES:
            continue
        s = weights.stub_for(t.name, arr) or weights.spill(t.name, arr)
        t._values = MappedValues(s)
        t.data_location = None
