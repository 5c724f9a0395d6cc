"""If and Loop in the interpreter (torch imported by the caller, :mod:`.module`).

- ``If``: both branches are converted; the condition is computed like any tensor and the
  branch it selects runs (gradients flow through that branch).
- ``Loop``: runs with a constant trip count ``M`` (an initializer or a Constant node's value,
  checked when the module is built; a trip count computed at run time is refused). The
  body's condition output is honoured (the loop stops when it is false); loop-carried values
  are passed from one iteration to the next and each scan output is stacked along a new first
  axis, as ONNX specifies.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, MutableMapping
from typing import Any

import numpy as np
import onnx
import torch

from onnxopt.errors import ModelError
from onnxopt.onnx2torch.graph import Body, Node

#: runs a body's nodes on an environment (the interpreter's ``execute``)
Execute = Callable[[list[Node], MutableMapping[str, Any]], None]


def check_trip_count(node: Node, constants: set[str]) -> None:
    """Refuse a Loop whose trip count is not a constant (one-line ModelError)."""
    m = node.inputs[0] if node.inputs else ""
    if not m or m not in constants:
        raise ModelError(
            f"Loop '{node.name}': its trip count is {'absent' if not m else 'computed at run time'};"
            " the torch converter runs Loops with a constant trip count only"
        )


def constants_of(g: onnx.GraphProto) -> set[str]:
    """Names of a graph's scalar initializers and Constant-node outputs (trip counts)."""
    out = {t.name for t in g.initializer if int(np.prod(t.dims)) <= 1}
    out |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    return out


def _body_env(body: Body, env: MutableMapping[str, Any], values: dict[str, Any]) -> ChainMap:
    local = ChainMap({}, env)
    for t in body.initializers:
        local[t.name] = values[t.name]
    return local


def run_if(
    node: Node, args: list[Any], env: MutableMapping[str, Any], run: Execute, values: dict
) -> list[Any]:
    cond = args[0]
    taken = bool(cond.reshape(-1)[0].item())
    body: Body = node.attrs["then_branch" if taken else "else_branch"]
    local = _body_env(body, env, values)
    run(body.nodes, local)
    return [local[o] for o in body.outputs]


def run_loop(
    node: Node, args: list[Any], env: MutableMapping[str, Any], run: Execute, values: dict
) -> list[Any]:
    body: Body = node.attrs["body"]
    trip = int(args[0].reshape(-1)[0].item())
    cond = args[1] if len(args) > 1 and args[1] is not None else None
    carried = list(args[2:])
    n_carried = len(carried)
    scans: list[list[Any]] = [[] for _ in body.outputs[1 + n_carried :]]
    going = True if cond is None else bool(cond.reshape(-1)[0].item())
    i = 0
    while i < trip and going:
        local = _body_env(body, env, values)
        local[body.inputs[0]] = torch.tensor(i, dtype=torch.int64)
        local[body.inputs[1]] = torch.tensor(going)
        for name, v in zip(body.inputs[2:], carried):
            local[name] = v
        run(body.nodes, local)
        outs = [local[o] for o in body.outputs]
        going = bool(outs[0].reshape(-1)[0].item())
        carried = outs[1 : 1 + n_carried]
        for k, v in enumerate(outs[1 + n_carried :]):
            scans[k].append(v)
        i += 1
    stacked = [torch.stack(s) if s else torch.empty((0,)) for s in scans]
    return carried + stacked


CONTROL = {"If": run_if, "Loop": run_loop}
