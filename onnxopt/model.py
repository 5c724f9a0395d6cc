"""Model I/O and checks.

(Slightly over the house's ~450 lines: every way a model file can be wrong is checked here,
in one place, so that each gives one line.)

- ``load_model`` takes a path, bytes or a ModelProto, with external data, and turns every way a
  file can be wrong into a one-line :class:`ModelError`.
- ``save_model`` writes atomically (temporary file in the target folder, then ``os.replace``)
  and switches to external data above 2 GB. It refuses to overwrite the model it was loaded from.
- ``light_model`` is a weight-free copy for checks and shape inference; ``structural_check``
  is the checker + strict shape inference every candidate goes through.
- What a model is made of (ops, parameters, MACs, bytes) is :mod:`onnxopt.summary`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from onnxopt import weights, wire
from onnxopt.errors import ModelError, first_line

logger = logging.getLogger(__name__)

#: protobuf cannot serialise a message of 2 GiB or more
PROTO_LIMIT = 2**31 - 1
#: above this, save weights as external data
EXTERNAL_THRESHOLD = 1_800_000_000
#: opsets onnxruntime runs here; older models must be converted first
MIN_OPSET = 7

ModelLike = "str | os.PathLike | bytes | onnx.ModelProto"


def load_model(
    src: Any, *, load_external: bool = True, check: bool = True, copy: bool = True
) -> onnx.ModelProto:
    """Load a model from a path, bytes or ModelProto (copied unless ``copy=False``; never modified).

    Raises:
        ModelError: missing file, not ONNX, truncated, rejected by the checker, unsupported opset.
    """
    if isinstance(src, onnx.ModelProto):
        if copy:
            model = onnx.ModelProto()
            model.CopyFrom(src)
        else:
            model = src
        where = "model"
    elif isinstance(src, (bytes, bytearray)):
        model = _parse(bytes(src), "bytes")
        where = "bytes"
    else:
        path = Path(os.fspath(src))
        where = str(path)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path}: is a folder, not an .onnx file")
        model = _read(path)
        if load_external and _has_external(model):
            _check_external_locations(model, path)
            _load_external(model, path)
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise ModelError(f"{where}: not an ONNX model (no graph)")
    if check:
        model = _runnable_opset(model, where)
        check_model(model, where)
    return model


def _runnable_opset(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """A model below the opsets onnxruntime runs, converted by onnx's version converter (with
    a warning), so that it can be verified; unchanged when it is recent enough."""
    opset = default_opset(model)
    if not opset or opset >= MIN_OPSET:
        return model
    converted, note = upgrade_opset(model, MIN_OPSET)
    if default_opset(converted) < MIN_OPSET:
        raise ModelError(f"{where}: opset {opset} is not supported (need >= {MIN_OPSET}); {note}")
    logger.warning("%s: %s, the oldest onnxruntime runs", where, note)
    return converted


def _read(path: Path) -> onnx.ModelProto:
    """Parse ``path``; a large file's embedded weights stay in it, mapped (see ``weights``)."""
    size = path.stat().st_size
    if not size:
        raise ModelError(f"{path}: file is empty")
    if size < weights.MAP_MIN_MODEL_BYTES:
        return _parse(path.read_bytes(), str(path))
    try:
        model = wire.load_skeleton(str(path), weights.MAP_MIN_TENSOR_BYTES)
    except wire.WireError as e:
        raise ModelError(f"{path}: not an ONNX model or truncated ({e})") from e
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{path}: not an ONNX model (no graph or IR version)")
    return model


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    """Resolve external data: mapped in place for a large model (the files are only checked
    here), loaded into the proto otherwise."""
    try:
        if weights.wants_mapping(model):
            weights.map_external(model, str(path.parent))
        else:
            onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelError(f"{path}: cannot load external data ({first_line(e)})") from e


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:
        raise ModelError(f"{where}: not an ONNX model or truncated ({type(e).__name__})") from e
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{where}: not an ONNX model (no graph or IR version)")
    return model


def _check_external_locations(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that is not a file inside the model's folder (an absolute path,
    ``..``, or a link leading out): a model file must not make onnxopt read anything else."""
    base = path.parent.resolve()
    for t in _external_tensors(model):
        loc = next((kv.value for kv in t.external_data if kv.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base):
            raise ModelError(
                f"{path}: refusing external data '{loc}' of tensor '{t.name}': "
                "it is not a file inside the model's folder"
            )


def _has_external(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL and not weights.is_mapped(t)
        for t in model.graph.initializer
    )


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """onnx.checker plus an opset range check, as a one-line ModelError."""
    opset = default_opset(model)
    if opset and opset < MIN_OPSET:
        raise ModelError(f"{where}: opset {opset} is not supported (need >= {MIN_OPSET})")
    if opset > onnx.defs.onnx_opset_version():
        raise ModelError(
            f"{where}: opset {opset} is newer than this onnx ({onnx.defs.onnx_opset_version()})"
        )
    try:
        light = light_model(model)
        onnx.checker.check_model(light)
        for t in model.graph.initializer:  # what the light copy does not carry: weight bytes
            _check_initializer(t)
    except onnx.checker.ValidationError as e:
        first = first_line(e)
        raise ModelError(f"{where}: rejected by onnx.checker: {first}") from e


#: the typed field that holds a tensor's values when it has no raw_data (4-bit types pack two
#: values per element and are left to the checker)
_VALUE_FIELDS = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT32: "uint64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.STRING: "string_data",
    **dict.fromkeys(
        (
            onnx.TensorProto.INT32,
            onnx.TensorProto.INT16,
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT16,
            onnx.TensorProto.UINT8,
            onnx.TensorProto.BOOL,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        ),
        "int32_data",
    ),
}


def _check_initializer(t: onnx.TensorProto) -> None:
    if weights.is_mapped(t):
        path, offset, length = weights.location(t)
        if length != weights.nbytes(t) or offset + length > os.path.getsize(path):
            raise onnx.checker.ValidationError(
                f"initializer '{t.name}' needs bytes {offset}..{offset + length} of {path}"
            )
        return
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    field = _VALUE_FIELDS.get(t.data_type)
    if field and t.data_location != onnx.TensorProto.EXTERNAL and not t.HasField("raw_data"):
        have = len(getattr(t, field))
        if have and have != n:
            raise onnx.checker.ValidationError(
                f"initializer '{t.name}' has {have} values for shape {list(t.dims)}"
            )
        return
    if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data"):
        return
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        return
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return
    if len(t.raw_data) != n * itemsize and itemsize:
        raise onnx.checker.ValidationError(
            f"initializer '{t.name}' has {len(t.raw_data)} bytes for shape {list(t.dims)}"
        )


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: the model; it is not modified. Mapped weights (see :mod:`onnxopt.weights`)
            are copied file to file, never through a serialized proto.
        path: destination.
        external_data: force external data on/off; ``None`` chooses by size (> ~1.8 GB).
            External data goes to ``<output name>.data`` beside the output (written to a
            temporary file, then moved into place), never into the input's data file.
        source: the input file; writing over it is refused.
    """
    path = Path(os.fspath(path))
    if source is not None and Path(os.fspath(source)).resolve() == path.resolve():
        raise ModelError(f"{path}: refusing to overwrite the input model; choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model_bytes(model) > EXTERNAL_THRESHOLD
    data_name = path.name + ".data"
    data_path = path.parent / data_name
    if external_data and os.path.realpath(data_path) in _input_files(model, source):
        raise ModelError(
            f"{data_path}: is the input's external data; refusing to replace it, choose another -o"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_data = None
    try:
        if external_data:
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            wire.write_external(model, tmp, tmp_data, data_name)
            _default_mode(tmp_data)
            os.replace(tmp_data, data_path)
        elif weights.is_mapped_model(model):
            wire.write_embedded(model, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        for p in (tmp, tmp_data):
            if p is not None and os.path.exists(p):
                os.unlink(p)
        raise
    return path


def _input_files(model: onnx.ModelProto, source: str | os.PathLike | None) -> set[str]:
    """Resolved paths of the files the model's weights come from (mapped stubs, and the
    external data the source file names)."""
    out = weights.sources(model)
    if source is None or not os.path.exists(source):
        return out
    src = Path(os.fspath(source))
    out.add(os.path.realpath(src))
    if src.stat().st_size < weights.MAP_MIN_MODEL_BYTES:
        try:
            m = onnx.load(str(src), load_external_data=False)
        except Exception:
            return out
        for t in _external_tensors(m):
            loc = next((kv.value for kv in t.external_data if kv.key == "location"), None)
            if loc:
                out.add(os.path.realpath(src.parent / loc))
    return out


def _default_mode(path: str) -> None:
    """mkstemp creates 0600 files; give the output the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _external_tensors(model: onnx.ModelProto):
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size, computed without serializing (fast on large models).

    A tensor held in ``raw_data`` counts its data from dims and dtype (asking protobuf for its
    ByteSize walks the bytes); others ask protobuf. Exact up to a few bytes per tensor.
    """
    light = light_model(model, max_elements=0)
    total = light.ByteSize()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL and t.data_type in _ITEMSIZE:
            total += weights.nbytes(t) + len(t.name) + 16 * (len(t.dims) + 2)
        elif t.HasField("raw_data") and t.data_type in _ITEMSIZE:
            n = int(np.prod(t.dims)) if len(t.dims) else 1
            total += n * _ITEMSIZE[t.data_type] + len(t.name) + 16 * (len(t.dims) + 2)
        else:
            total += t.ByteSize() + 6
    return total


_ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
}


#: initializers up to this many elements keep their values in a light model (shape constants)
LIGHT_MAX_ELEMENTS = 1024


def light_model(
    model: onnx.ModelProto, max_elements: int = LIGHT_MAX_ELEMENTS, *, stubs: bool = False
) -> onnx.ModelProto:
    """A copy without large weights: each big initializer becomes a graph input of its shape.

    Shape inference and the checker only need the weights' shapes, plus the values of small
    (shape) constants; on a 400 MB model this is ~50x faster than working on the full proto.
    With ``stubs``, a big numeric initializer instead stays an initializer whose data is
    external (``location: onnxopt-in-memory``), for onnxruntime to receive as an in-memory
    array; other big ones (strings, odd types) keep their data.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.producer_name = model.producer_name
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    declared = {v.name for v in src.input}
    g.input.extend(src.input)
    for t in src.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n <= max_elements and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif stubs:
            g.initializer.append(
                _stub(t, n)
                if t.data_type in _ITEMSIZE
                and (t.data_location != onnx.TensorProto.EXTERNAL or weights.is_mapped(t))
                else t
            )
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            pass  # already declared as an input (IR < 4 style); its value_info is there
    return light


def _stub(t: onnx.TensorProto, n: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(
        name=t.name, data_type=t.data_type, dims=t.dims, data_location=onnx.TensorProto.EXTERNAL
    )
    for k, v in (
        ("location", "onnxopt-in-memory"),
        ("offset", "0"),
        ("length", str(n * _ITEMSIZE[t.data_type])),
    ):
        e = stub.external_data.add()
        e.key, e.value = k, v
    return stub


def with_inferred_shapes(model: onnx.ModelProto, *, data_prop: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` whose value_info holds the inferred shapes (via the light model)."""
    inferred = infer_shapes_light(model, data_prop=data_prop)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    have = {o.name for o in out.graph.output}
    for o in inferred.graph.output:  # inferred output shapes where the model had none
        if o.name in have:
            for i, cur in enumerate(out.graph.output):
                if cur.name == o.name and not cur.type.tensor_type.HasField("shape"):
                    out.graph.output[i].CopyFrom(o)
    return out


def infer_shapes_light(
    model: onnx.ModelProto, *, strict: bool = False, data_prop: bool = True
) -> onnx.ModelProto:
    """onnx shape inference on :func:`light_model`; returns the light, inferred model."""
    return shape_inference.infer_shapes(
        light_model(model), check_type=strict, strict_mode=strict, data_prop=data_prop
    )


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, str]:
    """``model`` converted to opset ``target`` by onnx's version converter, or unchanged when it
    cannot be (with why). The result is checked on its light copy (no weights serialized)."""
    from onnx import version_converter

    from onnxopt.graph import opset_version

    before = opset_version(model)
    try:
        out = version_converter.convert_version(model, target)
        onnx.checker.check_model(light_model(out))
    except Exception as e:
        msg = first_line(e, 160)
        return model, f"opset {before} kept: onnx's version converter failed ({msg})"
    return out, f"opset {before} upgraded to {target} (onnx version converter)"


def structural_check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker and strict shape inference, as a ModelError.

    Both run on the light copy (large weights replaced by typed inputs of their shape): the
    checker still sees every node, attribute, opset and small constant, and shape inference is
    equivalent; on a 400 MB model this avoids serializing the weights twice per pass.

    Returns:
        the shape-inferred light copy (the stage's summary reuses it).
    """
    try:
        light = light_model(model)
        onnx.checker.check_model(light)
        return onnx.shape_inference.infer_shapes(
            light, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"invalid model after rewrite: {first_line(e)}") from e
