"""onnxruntime sessions over weights that stay where they are.

A session's large initializers (more than 1024 elements) never go through a serialized proto:

- **shared** (graph optimizations off: verification, references): each is an ``OrtValue`` over
  the weight's array, given with ``SessionOptions.add_initializer``, which onnxruntime uses in
  place. For a mapped weight (:mod:`onnxopt.weights`) that is the file's mapping itself, so
  every session of a run shares one copy of the weights. onnxruntime still checks the model's
  external-data references when it loads it, so the model is written (without weights) to a
  private folder and its stubs point at an empty placeholder file there: a kernel that tried
  to read the placeholder instead of the OrtValue would fail loudly, never read zeros.
- **copied** (graph optimizations on, where optimizers read initializers from the graph): the
  arrays go through ``add_external_initializers``, which onnxruntime copies.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from onnxopt import weights
from onnxopt.errors import ModelError, first_line

logger = logging.getLogger(__name__)

#: initializers with more elements than this are handed to onnxruntime as arrays
INLINE_MAX_ELEMENTS = 1024
PLACEHOLDER = "onnxopt-placeholder"

_lock = threading.Lock()
_state: dict[str, Any] = {}
_count = itertools.count()


def _folder() -> str:
    with _lock:
        if "dir" not in _state:
            d = tempfile.mkdtemp(prefix="onnxopt_sessions_")
            open(os.path.join(d, PLACEHOLDER), "wb").close()
            atexit.register(shutil.rmtree, d, True)
            _state["dir"] = d
        return _state["dir"]


class Split:
    """A model cut in two: ``shell`` (the model, its large initializers as stubs) and the
    large initializers' ``names``, ``arrays`` and whether each is ``mapped``."""

    def __init__(self, model: onnx.ModelProto, location: str) -> None:
        self.shell = weights.shell(model)
        self.names: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.mapped: list[onnx.TensorProto | None] = []
        for t in model.graph.initializer:
            n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
            external = t.data_location == onnx.TensorProto.EXTERNAL
            if (
                n <= INLINE_MAX_ELEMENTS
                or not weights.itemsize(t.data_type)
                or (external and not weights.is_mapped(t))
            ):
                self.shell.graph.initializer.append(t)
                continue
            self.names.append(t.name)
            self.arrays.append(np.ascontiguousarray(weights.array(t)))
            self.mapped.append(t if weights.is_mapped(t) else None)
            stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", "0")):
                e = stub.external_data.add()
                e.key, e.value = k, v
            self.shell.graph.initializer.append(stub)

    def identity(self) -> bytes:
        """Bytes that identify the model up to the in-memory arrays: the shell and where each
        mapped weight lives."""
        where = "".join(
            f"{n}@{weights.location(t)[:2]};" for n, t in zip(self.names, self.mapped) if t
        )
        return self.shell.SerializeToString() + where.encode()

    def inproto_arrays(self) -> list[np.ndarray]:
        return [a for a, t in zip(self.arrays, self.mapped) if t is None]


def ort_value(ort: Any, a: np.ndarray) -> Any:
    """An OrtValue over ``a``; bfloat16 (ml_dtypes, which onnxruntime's numpy bridge does not
    know) goes as its 16-bit pattern with the ONNX type."""
    if a.dtype.name == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            a.view(np.uint16), onnx.TensorProto.BFLOAT16
        )
    return ort.OrtValue.ortvalue_from_numpy(a)


#: intra-op threads for sessions that leave the count to onnxruntime (which starts one per
#: physical core, whatever the process's CPU share): a search worker holding one CPU sets 1
THREADS_ENV = "ONNXOPT_THREADS"


def cap_threads(so: Any) -> Any:
    """``so`` with ``intra_op_num_threads`` set from ``$ONNXOPT_THREADS`` where it was left at
    onnxruntime's default (0); an explicit count is kept."""
    cap = os.environ.get(THREADS_ENV, "")
    if cap.isdigit() and int(cap) > 0 and so.intra_op_num_threads == 0:
        so.intra_op_num_threads = int(cap)
    return so


def build(
    model: onnx.ModelProto,
    options: Callable[[], Any],
    *,
    copy_weights: bool = False,
    split: Split | None = None,
) -> Any:
    """A CPU session of ``model``; ``options()`` makes fresh SessionOptions.

    Raises:
        ModelError: onnxruntime cannot load the model (first line of its message).
    """
    if not copy_weights:
        try:
            return _shared(model, cap_threads(options()), split)
        except _NeedsCopy as e:
            logger.debug("shared weights refused (%s); copying them", e)
    return _copied(model, cap_threads(options()))


class _NeedsCopy(Exception):
    pass


def _shared(model: onnx.ModelProto, so: Any, split: Split | None) -> Any:
    import onnxruntime as ort

    s = split if split is not None else Split(model, PLACEHOLDER)
    values = [ort_value(ort, a) for a in s.arrays]
    for name, v in zip(s.names, values):
        so.add_initializer(name, v)
    path = os.path.join(_folder(), f"model{next(_count)}.onnx")
    with open(path, "wb") as f:
        f.write(s.shell.SerializeToString())
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        msg = first_line(e)
        if s.names and ("External" in msg or "external" in msg or PLACEHOLDER in msg):
            raise _NeedsCopy(msg) from e
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from e
    finally:
        os.unlink(path)
    sess._onnxopt_weights = (s.arrays, values, s)  # onnxruntime uses this memory: keep it
    return sess


def _copied(model: onnx.ModelProto, so: Any) -> Any:
    import onnxruntime as ort

    s = Split(model, "onnxopt-in-memory")
    values = [ort_value(ort, a) for a in s.arrays]
    if s.names:
        so.add_external_initializers(s.names, values)
    try:
        sess = ort.InferenceSession(
            s.shell.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load the model: {first_line(e)}") from e
    sess._onnxopt_weights = (s.arrays, values, s)
    return sess
