"""Weights that stay where they are: large initializers memory-mapped from their files.

A model whose weights total at least :data:`MAP_MIN_MODEL_BYTES` is held as a *skeleton*: each
main-graph initializer of at least :data:`MAP_MIN_TENSOR_BYTES` is a stub (``data_location:
EXTERNAL``, ``location`` the absolute path of the file that holds its bytes, ``offset``,
``length``, and the marker ``onnxopt: mapped``). Its values are a read-only numpy view of one
shared ``mmap`` of that file (:func:`array`): the input's external data file, the ``.onnx``
file itself when the weights are embedded (:mod:`onnxopt.wire` finds their offsets), or a
scratch file where a pass's new weights are written once (:func:`spill`). Every proto, graph
and onnxruntime session of a run then refers to the same pages, which the kernel can drop and
re-read at will (they are file-backed), instead of holding one copy each.

A stub is a reference valid in this process only: :func:`onnxopt.model.save_model` writes the
bytes out (external data beside the output, or embedded), and :func:`materialize` turns a
skeleton back into a self-contained proto for code that needs one.
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

#: a model whose initializers total this many bytes is held as a skeleton over mapped files
MAP_MIN_MODEL_BYTES = int(os.environ.get("ONNXOPT_MAP_MIN_MODEL_BYTES", 64 << 20))
#: initializers from this size on are mapped (smaller ones stay in the proto)
MAP_MIN_TENSOR_BYTES = int(os.environ.get("ONNXOPT_MAP_MIN_TENSOR_BYTES", 64 << 10))
#: the external_data key that marks a mapped stub
MARK = "onnxopt"
#: where new weights are spilled (default: the system's temporary folder)
SCRATCH_ENV = "ONNXOPT_SCRATCH_DIR"


@dataclass
class Region:
    """One mapping: ``size`` bytes of ``path`` from ``file_offset``, at address ``addr``."""

    path: str
    file_offset: int
    size: int
    mm: mmap.mmap
    addr: int


_lock = threading.RLock()
_regions: list[Region] = []
_scratch: dict[str, object] = {}


def _map(path: str, offset: int = 0, size: int | None = None) -> Region:
    """Map ``size`` bytes of ``path`` from ``offset`` (page aligned), read-only, once."""
    with _lock:
        for r in _regions:
            if r.path == path and r.file_offset == offset and (size is None or r.size == size):
                return r
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            size = total - offset if size is None else size
            if size <= 0:
                raise OSError(f"{path}: nothing to map at offset {offset}")
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ, offset=offset)
        addr = np.frombuffer(mm, np.uint8, count=1).__array_interface__["data"][0]
        region = Region(path, offset, size, mm, addr)
        _regions.append(region)
        return region


def _region_for(path: str, offset: int, length: int) -> tuple[Region, int]:
    """The region holding ``[offset, offset + length)`` of ``path`` and the offset in it."""
    with _lock:
        for r in _regions:
            if (
                r.path == path
                and r.file_offset <= offset
                and offset + length <= r.file_offset + r.size
            ):
                return r, offset - r.file_offset
        r = _map(path)  # an input file: mapped whole
    if offset + length > r.size:
        raise ValueError(f"{path}: bytes {offset}..{offset + length} are past its end ({r.size})")
    return r, offset


# ------------------------------------------------------------------------------------ stubs


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_mapped(t: onnx.TensorProto) -> bool:
    """Whether ``t`` is a mapped stub (made by this module)."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == MARK for e in t.external_data
    )


def itemsize(data_type: int) -> int | None:
    """Bytes per element of a TensorProto data type with a fixed numpy size, else None."""
    try:
        np_type = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:
        return None
    if data_type in (onnx.TensorProto.STRING,) or np.dtype(np_type).kind in "OSU":
        return None
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        return None  # packed two to a byte
    return np.dtype(np_type).itemsize


def nbytes(t: onnx.TensorProto) -> int:
    """Bytes of ``t``'s data from dims and type (0 when the type has no fixed size)."""
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    return n * (itemsize(t.data_type) or 0)


def stub(name: str, data_type: int, dims, path: str, offset: int) -> onnx.TensorProto:
    """A mapped stub for ``name`` whose bytes are at ``offset`` of ``path``."""
    t = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (
        ("location", path),
        ("offset", str(offset)),
        ("length", str(nbytes(t))),
        (MARK, "mapped"),
    ):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def location(t: onnx.TensorProto) -> tuple[str, int, int]:
    """(file, offset, length) of a mapped stub."""
    d = _entries(t)
    return d["location"], int(d.get("offset", 0)), int(d.get("length", nbytes(t)))


def array(t: onnx.TensorProto) -> np.ndarray:
    """The values of ``t``: a read-only view of the mapping for a stub, else numpy's copy."""
    if not is_mapped(t):
        return numpy_helper.to_array(t)
    path, offset, length = location(t)
    region, at = _region_for(path, offset, length)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    count = length // dtype.itemsize
    return np.frombuffer(region.mm, dtype, count=count, offset=at).reshape(tuple(t.dims))


def find(arr: np.ndarray) -> tuple[str, int] | None:
    """(file, offset) when ``arr`` is a contiguous view inside a mapping, else None."""
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous or arr.nbytes == 0:
        return None
    addr = arr.__array_interface__["data"][0]
    with _lock:
        for r in _regions:
            if r.addr <= addr and addr + arr.nbytes <= r.addr + r.size:
                return r.path, r.file_offset + addr - r.addr
    return None


def stub_for(name: str, arr: np.ndarray) -> onnx.TensorProto | None:
    """A stub for ``arr`` when it lives in a mapping (no copy), else None."""
    where = find(arr)
    if where is None or arr.dtype.kind in "OSU":
        return None
    data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    return stub(name, data_type, arr.shape, *where)


# ---------------------------------------------------------------------------------- scratch


def _scratch_file() -> tuple[int, str]:
    with _lock:
        if "fd" not in _scratch:
            base = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
            folder = tempfile.mkdtemp(prefix="onnxopt_weights_", dir=base)
            path = os.path.join(folder, "scratch.bin")
            _scratch.update(fd=os.open(path, os.O_RDWR | os.O_CREAT, 0o600), path=path, end=0)
            _scratch["folder"] = folder
            atexit.register(shutil.rmtree, folder, True)
        return _scratch["fd"], _scratch["path"]  # type: ignore[return-value]


def spill(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """Write ``arr`` once to the scratch file and return its mapped stub."""
    arr = np.ascontiguousarray(arr)
    fd, path = _scratch_file()
    with _lock:
        gran = mmap.ALLOCATIONGRANULARITY
        offset = -(-int(_scratch["end"]) // gran) * gran
        _scratch["end"] = offset + arr.nbytes
    view = memoryview(arr.reshape(-1).view(np.uint8))
    done = 0
    while done < arr.nbytes:
        done += os.pwrite(fd, view[done : done + (64 << 20)], offset + done)
    _map(path, offset, arr.nbytes)
    return stub(name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape, path, offset)


# ---------------------------------------------------------------------------- whole models


def main_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer


def is_mapped_model(model: onnx.ModelProto) -> bool:
    """Whether any main-graph initializer of ``model`` is a mapped stub."""
    return any(is_mapped(t) for t in model.graph.initializer)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializers (from dims and types)."""
    return sum(nbytes(t) for t in model.graph.initializer)


def wants_mapping(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is large enough to be held over mapped files."""
    return weight_bytes(model) >= MAP_MIN_MODEL_BYTES


def _spillable(t: onnx.TensorProto) -> bool:
    return (
        not is_mapped(t)
        and t.data_location != onnx.TensorProto.EXTERNAL
        and itemsize(t.data_type) is not None
        and nbytes(t) >= MAP_MIN_TENSOR_BYTES
    )


def _copy_fields(dst, src, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, (str, bytes, int, float)):
            setattr(dst, field.name, value)
        elif hasattr(value, "CopyFrom"):
            getattr(dst, field.name).CopyFrom(value)
        else:
            getattr(dst, field.name).extend(value)


def shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its main-graph initializers (everything else copied)."""
    out = onnx.ModelProto()
    if not len(model.graph.initializer):
        out.CopyFrom(model)
        return out
    _copy_fields(out, model, "graph")
    _copy_fields(out.graph, model.graph, "initializer")
    return out


def externalize(model: onnx.ModelProto, *, in_place: bool = False) -> onnx.ModelProto:
    """``model`` with every large in-proto main-graph initializer spilled to the scratch file
    and replaced by its mapped stub (one tensor in memory at a time)."""
    if not any(_spillable(t) for t in model.graph.initializer):
        return model
    out = model if in_place else shell(model)
    src = list(model.graph.initializer) if in_place else model.graph.initializer
    new = []
    for t in src:
        if _spillable(t):
            new.append(spill(t.name, numpy_helper.to_array(t)))
        else:
            new.append(t)
    if in_place:
        del out.graph.initializer[:]
    out.graph.initializer.extend(new)
    return out


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A self-contained copy of ``model``: every mapped stub replaced by its bytes (for code
    that hands the proto to another library; ``model`` itself is not modified)."""
    if not is_mapped_model(model):
        return model
    out = shell(model)
    for t in model.graph.initializer:
        if is_mapped(t):
            full = numpy_helper.from_array(np.ascontiguousarray(array(t)), t.name)
            full.data_type = t.data_type
            out.graph.initializer.append(full)
        else:
            out.graph.initializer.append(t)
    return out


def sources(model: onnx.ModelProto) -> set[str]:
    """Resolved paths of the files ``model``'s mapped stubs read."""
    return {os.path.realpath(location(t)[0]) for t in model.graph.initializer if is_mapped(t)}


def copy_bytes(t: onnx.TensorProto, out_fd: int, out_offset: int) -> None:
    """Copy a mapped stub's bytes to ``out_fd`` at ``out_offset`` (kernel-side when it can:
    the pages need not pass through this process)."""
    path, offset, length = location(t)
    with open(path, "rb") as f:
        src, done = f.fileno(), 0
        while done < length:
            n = min(length - done, 256 << 20)
            try:
                k = os.copy_file_range(src, out_fd, n, offset + done, out_offset + done)
            except (AttributeError, OSError):
                k = os.pwrite(out_fd, os.pread(src, n, offset + done), out_offset + done)
            if k <= 0:
                raise OSError(f"{path}: short read at {offset + done}")
            done += k


def _external_file(t: onnx.TensorProto, base_dir: str) -> tuple[str, int, int]:
    d = _entries(t)
    loc = d.get("location", "")
    base = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(base, loc))
    if not loc or os.path.isabs(loc) or os.path.commonpath([base, path]) != base:
        raise ValueError(
            f"'{t.name}': external data location {loc!r} is outside the model's folder"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{t.name}': {loc}: no such file")
    offset, length = int(d.get("offset", 0)), int(d.get("length", nbytes(t)))
    if offset + length > os.path.getsize(path):
        raise ValueError(f"'{t.name}': {loc} is shorter than offset {offset} + length {length}")
    return path, offset, length


def map_external(model: onnx.ModelProto, base_dir: str) -> None:
    """Turn ``model``'s external data references into mapped stubs (large main-graph
    initializers) or load them into the proto (the rest), checking every file and range."""
    from onnx.external_data_helper import _get_all_tensors

    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL or is_mapped(t):
            continue
        path, offset, length = _external_file(t, base_dir)
        if itemsize(t.data_type) and length == nbytes(t) >= MAP_MIN_TENSOR_BYTES:
            s = stub(t.name, t.data_type, t.dims, path, offset)
            t.ClearField("external_data")
            t.external_data.extend(s.external_data)
    for t in _get_all_tensors(model):  # small ones, and those of subgraphs and attributes
        if t.data_location != onnx.TensorProto.EXTERNAL or is_mapped(t):
            continue
        path, offset, length = _external_file(t, base_dir)
        with open(path, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.DEFAULT
