"""Reading and writing large ONNX files without holding their weights in memory.

onnx's own ``load`` parses the whole file (a copy of every weight) and its ``save`` serializes
it (another). Here the protobuf wire format is walked directly (field key = ``number << 3 |
wire type``; a length-delimited field is ``varint(len)`` followed by its bytes):

- :func:`load_skeleton` maps the file and copies every field but the large ``raw_data`` of the
  main graph's initializers (``ModelProto.graph = 7``, ``GraphProto.initializer = 5``,
  ``TensorProto.raw_data = 9``), which become mapped stubs pointing into the file itself;
- :func:`write_embedded` writes a model whose stubs are filled in from their files: the
  shell is serialized without them, then each tensor is appended as a field of the graph, its
  bytes copied file to file;
- :func:`write_external` writes the large tensors to a data file beside the model (offsets
  aligned to 4 KiB, so onnxruntime can map them) and the model with relative references.

Repeated fields may appear anywhere in a message, so appending the initializers after the
graph's other fields is a valid encoding of the same model.
"""

from __future__ import annotations

import mmap
import os

import onnx

from onnxopt import weights

_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9
#: data file offsets are aligned to this (onnxruntime maps aligned external data)
ALIGN = 4096


class WireError(ValueError):
    """The file is not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def fields(buf, start: int, end: int):
    """Yield ``(number, wire type, header start, value start, value end)`` of a message."""
    pos = start
    while pos < end:
        key, p = _varint(buf, pos, end)
        number, wt = key >> 3, key & 7
        if wt == 0:
            _, q = _varint(buf, p, end)
        elif wt == 1:
            q = p + 8
        elif wt == 2:
            n, p = _varint(buf, p, end)
            q = p + n
        elif wt == 5:
            q = p + 4
        else:
            raise WireError(f"unsupported wire type {wt}")
        if q > end or number == 0:
            raise WireError("field runs past the end of its message")
        yield number, wt, pos, p, q
        pos = q


def _tensor(buf, start: int, end: int, path: str, min_bytes: int) -> bytes:
    """A TensorProto's bytes, as a mapped stub when its raw_data is large."""
    raw = None
    rest = bytearray()
    for number, wt, head, p, q in fields(buf, start, end):
        if number == _RAW_DATA and wt == 2 and q - p >= min_bytes:
            raw = (p, q - p)
        else:
            rest += buf[head:q]
    if raw is None:
        return bytes(buf[start:end])
    t = onnx.TensorProto()
    t.ParseFromString(bytes(rest))
    if weights.itemsize(t.data_type) is None or weights.nbytes(t) != raw[1]:
        return bytes(buf[start:end])  # not a plain fixed-size tensor: keep it as it is
    s = weights.stub(t.name, t.data_type, t.dims, path, raw[0])
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("external_data")
    t.external_data.extend(s.external_data)
    return t.SerializeToString()


def _graph(buf, start: int, end: int, path: str, min_bytes: int) -> bytes:
    out = bytearray()
    for number, wt, head, p, q in fields(buf, start, end):
        if number == _INITIALIZER and wt == 2:
            t = _tensor(buf, p, q, path, min_bytes)
            out += _key(_INITIALIZER, 2) + encode_varint(len(t)) + t
        else:
            out += buf[head:q]
    return bytes(out)


def load_skeleton(path: str, min_bytes: int = weights.MAP_MIN_TENSOR_BYTES) -> onnx.ModelProto:
    """Parse ``path`` with its large embedded initializers as mapped stubs into the file.

    Raises:
        WireError: the file is not a protobuf message (or is truncated).
    """
    path = os.path.realpath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        out = bytearray()
        for number, wt, head, p, q in fields(mm, 0, size):
            if number == _GRAPH and wt == 2:
                g = _graph(mm, p, q, path, min_bytes)
                out += _key(_GRAPH, 2) + encode_varint(len(g)) + g
            else:
                out += mm[head:q]
    finally:
        mm.close()  # the stubs' data is mapped again (once, shared) when first read
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(out))
    except Exception as e:
        raise WireError(f"not an ONNX model ({type(e).__name__})") from e
    return model


# ------------------------------------------------------------------------------- writing


def _fill(fd: int, t: onnx.TensorProto, at: int) -> int:
    """Write ``t``'s bytes (mapped or in-proto) at ``at``; returns the byte count."""
    if weights.is_mapped(t):
        weights.copy_bytes(t, fd, at)
        return weights.location(t)[2]
    data = weights.array(t).tobytes()
    os.pwrite(fd, data, at)
    return len(data)


_DATA_FIELDS = (
    "external_data",
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def _header(t: onnx.TensorProto) -> onnx.TensorProto:
    h = onnx.TensorProto()
    h.CopyFrom(t)
    for name in _DATA_FIELDS:
        h.ClearField(name)
    h.data_location = onnx.TensorProto.DEFAULT
    return h


def write_embedded(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` (a new file) with every mapped stub's bytes embedded."""
    mapped = [t for t in model.graph.initializer if weights.is_mapped(t)]
    shell = weights.shell(model)
    shell.graph.initializer.extend(t for t in model.graph.initializer if not weights.is_mapped(t))
    graph = shell.graph.SerializeToString()
    shell.ClearField("graph")
    parts = []  # (tensor field header, header message, tensor) per mapped tensor
    total = len(graph)
    for t in mapped:
        head = _header(t).SerializeToString()
        n = weights.location(t)[2]
        body = head + _key(_RAW_DATA, 2) + encode_varint(n)
        field = _key(_INITIALIZER, 2) + encode_varint(len(body) + n)
        parts.append((field, body, t))
        total += len(field) + len(body) + n
    prefix = shell.SerializeToString() + _key(_GRAPH, 2) + encode_varint(total) + graph
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, prefix)
        at = len(prefix)
        for field, body, t in parts:
            os.pwrite(fd, field + body, at)
            at += len(field) + len(body)
            at += _fill(fd, t, at)
    finally:
        os.close(fd)


def write_external(
    model: onnx.ModelProto, path: str, data_path: str, data_name: str, min_bytes: int = 1024
) -> None:
    """Write ``model`` to ``path`` with its main-graph initializers of ``min_bytes`` or more in
    ``data_path`` (both new files); the model refers to the data as ``data_name``."""
    shell = weights.shell(model)
    fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    at = 0
    try:
        for t in model.graph.initializer:
            if weights.itemsize(t.data_type) is None or weights.nbytes(t) < min_bytes:
                shell.graph.initializer.append(t)
                continue
            at = -(-at // ALIGN) * ALIGN
            n = _fill(fd, t, at)
            ref = _header(t)
            ref.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(at)), ("length", str(n))):
                e = ref.external_data.add()
                e.key, e.value = k, v
            shell.graph.initializer.append(ref)
            at += n
    finally:
        os.close(fd)
    with open(path, "wb") as f:
        f.write(shell.SerializeToString())
