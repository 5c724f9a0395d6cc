"""A model whose large weights stay in its file: a light ModelProto plus memory-mapped arrays.

``onnx.load`` reads the whole file and parses it (a 440 MB model costs about twice that at
load). :func:`open_mapped` instead walks the protobuf wire format of the file through ``mmap``
(ModelProto field 7 = graph, GraphProto field 5 = initializer, TensorProto field 9 = raw_data)
and parses every field except the large ``raw_data`` payloads; each of those becomes a numpy
view of the mapped file (or of its external-data file). Nothing is copied, and a page of
weights is resident only while it is being read.

The weights then go to onnxruntime as *inputs* of each run (:meth:`MappedModel.session_model`
turns the large initializers into graph inputs): onnxruntime reads a CPU input in place, whereas
an initializer given to a session (``add_external_initializers``) is copied into the session.
:meth:`MappedModel.release` drops the mapped pages from the process (``MADV_DONTNEED``; they stay
in the page cache), so two models run one after the other never hold both sets of weights.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import ModelError

#: initializers with more elements than this are mapped (the rest are parsed: shape constants)
MAPPED_MIN_ELEMENTS = 1024
#: where a mapped initializer's stub says its data is (never a real file)
IN_MEMORY = "onnxopt-in-memory"

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_TYPE, _T_NAME, _T_RAW, _T_EXTERNAL, _T_LOCATION = 1, 2, 8, 9, 13, 14


@dataclass
class MappedModel:
    """A light model (large initializers are external stubs) and the mapped weights.

    Attributes:
        path: the model file.
        proto: the model; each large initializer is a stub (``data_location`` EXTERNAL,
            location ``onnxopt-in-memory``) whose values are in ``weights``.
        weights: name -> read-only array viewing the mapped file.
        nbytes: bytes of the mapped weights.
    """

    path: Path
    proto: onnx.ModelProto
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0
    _maps: list[mmap.mmap] = field(default_factory=list, repr=False)

    def session_model(self) -> onnx.ModelProto:
        """A copy whose mapped initializers are graph inputs (fed by :meth:`feeds`)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.proto)
        kept = [t for t in m.graph.initializer if t.name not in self.weights]
        stubs = [t for t in m.graph.initializer if t.name in self.weights]
        del m.graph.initializer[:]
        m.graph.initializer.extend(kept)
        declared = {v.name for v in m.graph.input}
        for t in stubs:
            if t.name not in declared:
                m.graph.input.append(
                    onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                )
        return m

    def feeds(self, run: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` plus the mapped weights, as one run's inputs of :meth:`session_model`."""
        return {**run, **self.weights}

    def release(self) -> None:
        """Drop the mapped pages from this process (they are re-read from the page cache)."""
        for mm in self._maps:
            _advise(mm, "MADV_DONTNEED")

    def close(self) -> None:
        """Unmap the files (the arrays must not be used afterwards)."""
        self.weights.clear()
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:  # an array still views it; the map goes with the array
                pass
        self._maps.clear()


def mapped_from_proto(model: onnx.ModelProto, path: str | os.PathLike = "") -> MappedModel:
    """The same interface over a model already in memory (weights are converted, not mapped)."""
    from onnx import numpy_helper

    from onnxopt.model import light_model

    light = light_model(model, MAPPED_MIN_ELEMENTS, stubs=True)
    stubbed = {t.name for t in light.graph.initializer if _is_stub(t)}
    from onnxopt import weights as mapping

    # a weight memory-mapped at load (onnxopt.weights) is read through its mapping
    weights = {
        t.name: mapping.array(t) if mapping.is_mapped(t) else numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name in stubbed
    }
    nbytes = sum(a.nbytes for a in weights.values())
    return MappedModel(Path(path), light, weights, nbytes)


def open_mapped(path: str | os.PathLike) -> MappedModel:
    """Open ``path`` with its large weights mapped, not read (module docstring).

    Raises:
        ModelError: the file is missing or is not a readable ONNX model.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelError(f"{path}: empty file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out = MappedModel(path, onnx.ModelProto(), _maps=[mm])
    _advise(mm, "MADV_RANDOM")  # the scan reads headers only: no read-around of the weights
    try:
        _read_model(mm, out)
    except Exception as e:  # IndexError, ValueError, protobuf's DecodeError
        out.close()
        raise ModelError(f"{path}: not a valid ONNX model ({type(e).__name__}: {e})") from e
    _advise(mm, "MADV_NORMAL")
    out.release()
    return out


def _advise(mm: mmap.mmap, what: str) -> None:
    if hasattr(mm, "madvise") and hasattr(mmap, what):
        mm.madvise(getattr(mmap, what))


# ------------------------------------------------------------------------------------------------
# protobuf wire format


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _fields(buf: Any, start: int, end: int):
    """(field number, wire type, value start, value end, tag start) for each field."""
    pos = start
    while pos < end:
        tag = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, nxt = _varint(buf, pos)
        elif wire == 1:
            nxt = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            nxt = pos + length
        elif wire == 5:
            nxt = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if nxt > end:
            raise ValueError("truncated message")
        yield number, wire, pos, nxt, tag
        pos = nxt


def _read_model(mm: mmap.mmap, out: MappedModel) -> None:
    top, graph = bytearray(), None
    for number, _w, vs, ve, tag in _fields(mm, 0, len(mm)):
        if number == _MODEL_GRAPH:
            graph = (vs, ve)
        else:
            top += mm[tag:ve]
    out.proto.ParseFromString(bytes(top))
    if graph is None:
        raise ValueError("no graph")
    rest, inits = bytearray(), []
    for number, _w, vs, ve, tag in _fields(mm, *graph):
        if number == _GRAPH_INITIALIZER:
            inits.append(_read_tensor(mm, vs, ve, out))
        else:
            rest += mm[tag:ve]
    g = onnx.GraphProto()
    g.ParseFromString(bytes(rest))
    g.initializer.extend(inits)
    out.proto.graph.CopyFrom(g)


def _read_tensor(mm: mmap.mmap, start: int, end: int, out: MappedModel) -> onnx.TensorProto:
    """A TensorProto whose large ``raw_data`` is left in the file (a stub and a mapped view)."""
    head, raw = bytearray(), None
    for number, _w, vs, ve, tag in _fields(mm, start, end):
        if number == _T_RAW:
            raw = (vs, ve)
        else:
            head += mm[tag:ve]
    t = onnx.TensorProto()
    t.ParseFromString(bytes(head))
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    external = t.data_location == onnx.TensorProto.EXTERNAL
    if n <= MAPPED_MIN_ELEMENTS or t.data_type in _UNMAPPED or (raw is None and not external):
        if raw is not None:
            t.raw_data = mm[raw[0] : raw[1]]
        elif external:
            _load_external(t, out.path.parent)
        return t
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    if external:
        info = {e.key: e.value for e in t.external_data}
        arr = _map_external(out, info, dtype, n)
    else:
        if raw[1] - raw[0] != n * dtype.itemsize:
            raise ValueError(f"initializer '{t.name}': raw_data size does not match its dims")
        arr = np.frombuffer(mm, dtype=dtype, count=n, offset=raw[0])
    out.weights[t.name] = arr.reshape(tuple(t.dims))
    out.nbytes += arr.nbytes
    return _stub(t)


#: element types whose bytes are not a plain numpy array (strings, 4-bit, bfloat16, float8)
_UNMAPPED = {
    onnx.TensorProto.STRING,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.UINT4,
    onnx.TensorProto.INT4,
    *[getattr(onnx.TensorProto, n) for n in dir(onnx.TensorProto) if n.startswith("FLOAT8")],
}


def _map_external(out: MappedModel, info: dict[str, str], dtype: np.dtype, n: int) -> np.ndarray:
    loc = out.path.parent / info.get("location", "")
    if not loc.is_file():
        raise ModelError(f"{out.path}: external data file {loc} not found")
    offset, length = int(info.get("offset", 0)), int(info.get("length", n * dtype.itemsize))
    if length != n * dtype.itemsize:
        raise ModelError(f"{out.path}: external data of {loc.name} does not match its dims")
    with open(loc, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out._maps.append(mm)
    return np.frombuffer(mm, dtype=dtype, count=n, offset=offset)


def _load_external(t: onnx.TensorProto, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_tensor

    try:
        load_external_data_for_tensor(t, str(base))
    except Exception as e:
        raise ModelError(f"initializer '{t.name}': cannot read its external data ({e})") from e
    t.data_location = onnx.TensorProto.DEFAULT
    del t.external_data[:]


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    stub = onnx.TensorProto(
        name=t.name, data_type=t.data_type, dims=t.dims, data_location=onnx.TensorProto.EXTERNAL
    )
    for k, v in (("location", IN_MEMORY), ("offset", "0"), ("length", "0")):
        e = stub.external_data.add()
        e.key, e.value = k, v
    return stub


def _is_stub(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == IN_MEMORY for e in t.external_data
    )
