"""The differential oracle: optimize a fuzzed graph verified on one input distribution, then
compare the original and the optimized model in onnxruntime on inputs verification never
saw (``feeds.adversarial``).

An exact pipeline must not depend on its verification data, so any difference beyond the
exact tolerance (``onnxopt.verify.Exact``, widened to ``NOISE_FACTOR`` times the original's
own float noise on that input, as the verifier does) is a bug in a pass. Each case lands in
one bucket:

- ``optimized`` / ``unchanged``: equal on every input (at least one pass kept / none);
- ``changed``: outputs differ on some input (``Outcome.inputs`` says which kind);
- ``invalid``: the returned model fails ``onnx.checker`` or strict shape inference, renames or
  reorders inputs or outputs, declares an output type or static dim that the run contradicts,
  or does not run;
- ``crashed``: an exception escaped ``PassManager.run``;
- ``refused``: a one-line ``OnnxoptError`` (the generator made something onnxopt refuses);
- ``not_runnable``: onnxruntime cannot run the original (its bug, not a pass's).

``Outcome.errors`` lists passes that raised inside the manager (rolled back as "error"), and
``Outcome.rolled_back`` those the verifier rolled back: neither reaches the user, but both
are bugs in a pass too. ``Outcome.culprit`` names the first kept pass whose prefix of the
pipeline already fails.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import OnnxoptError, first_line
from onnxopt.model import structural_check
from onnxopt.runner import Runner
from onnxopt.verify import Exact
from tests.fuzz import feeds as fz_feeds
from tests.fuzz.generator import Case

logger = logging.getLogger(__name__)

#: what the exact pipeline is, per target
PASSES = ["cleanup", "fusion"]
BAD = ("changed", "invalid", "crashed")


@dataclass
class Outcome:
    """What one case did under one target (see the module docstring)."""

    status: str
    target: str
    detail: str = ""
    inputs: str = ""
    kept: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: "pass: why" for every rollback (a pass rolled back, or sites of it dropped)
    rollbacks: list[str] = field(default_factory=list)
    culprit: str = ""
    within_noise: bool = False
    seconds: float = 0.0

    @property
    def bad(self) -> bool:
        return self.status in BAD


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's log off (some originals hit an onnxruntime If bug) and onnxopt's at
    ERROR for a fuzz run; onnxopt's level is restored after (later tests read its warnings)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    log = logging.getLogger("onnxopt")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def optimize(case: Case, target: str, passes: list[Any] | None = None):
    """``PassManager.run`` on the case, verified on the ``verify`` distribution."""
    from onnxopt.passes.registry import manager

    feeds = Feeds(fz_feeds.verification(case.inputs), source="fuzz verify")
    return manager(list(passes or PASSES), target=target).run(case.model, feeds)


def check(case: Case, target: str = "onnx", *, attribute: bool = True) -> Outcome:
    """Optimize ``case`` and judge the result on adversarial inputs."""
    t0 = time.perf_counter()
    why = runnable(case)
    if why:
        return Outcome("not_runnable", target, why, seconds=time.perf_counter() - t0)
    try:
        out, report = optimize(case, target)
    except OnnxoptError as e:
        return Outcome("refused", target, first_line(e, 300), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - the bug this counts
        where = _pass_in_traceback(e)
        return Outcome(
            "crashed",
            target,
            f"{type(e).__name__}: {first_line(e, 300)}",
            culprit=where,
            seconds=time.perf_counter() - t0,
        )
    res = Outcome("unchanged", target)
    res.kept = [p.name for p in report.passes if p.status == "kept"]
    res.rolled_back = [
        p.name for p in report.passes if p.status == "rolled back" or p.dropped_sites
    ]
    res.errors = [f"{p.name}: {p.reason}"[:300] for p in report.passes if p.status == "error"]
    res.rollbacks = [
        f"{p.name}: {p.reason or (p.notes[-1] if p.notes else '')}"[:300]
        for p in report.passes
        if p.status == "rolled back" or p.dropped_sites
    ]
    judge(case, out, res)
    if res.status not in BAD:
        res.status = "optimized" if res.kept else "unchanged"
    elif attribute and res.kept:
        res.culprit = culprit(case, target, res.kept, res.status)
    res.seconds = time.perf_counter() - t0
    return res


def runnable(case: Case) -> str:
    """Why onnxruntime cannot run the original on the verification inputs ("" if it can).

    onnxruntime 1.32 fails some graphs whose If branches read an outer-scope value produced
    by a Cast (its "InsertedPrecisionFreeCast" loses the value): not onnxopt's to judge."""
    try:
        Runner(threads=1, quiet=True).run(case.model, Feeds(fz_feeds.verification(case.inputs)))
    except OnnxoptError as e:
        return first_line(e, 300)
    return ""


def judge(case: Case, out: onnx.ModelProto, res: Outcome) -> None:
    """Set ``res.status`` to invalid or changed (with details) when ``out`` is either."""
    why = validity(case.model, out)
    if why:
        res.status, res.detail = "invalid", why
        return
    runner = Runner(threads=1, quiet=True)
    for kind, run in fz_feeds.adversarial(
        case.inputs, specials=case.specials, dynamic=bool(case.dynamic)
    ):
        try:
            ref = runner.run(case.model, Feeds([run]))
        except OnnxoptError:
            continue  # the original cannot run this input (e.g. an empty batch): not judged
        try:
            got = runner.run(out, Feeds([run]))
        except OnnxoptError as e:
            res.status, res.detail, res.inputs = (
                "invalid",
                f"does not run: {first_line(e, 200)}",
                kind,
            )
            return
        why = declared_mismatch(out, got[0])
        if why:
            res.status, res.detail, res.inputs = "invalid", why, kind
            return
        verdict = Exact().check(ref, got)
        if verdict:
            continue
        noise = _noise(runner, case.model, run, ref)
        if noise and Exact().check(ref, got, noise):
            res.within_noise = True
            continue
        res.status, res.detail, res.inputs = "changed", verdict.reason[:400], kind
        return


def _noise(runner: Runner, model: onnx.ModelProto, run: dict, ref) -> dict[str, float]:
    """The original's own float noise on ``run``, per output: the larger of onnxruntime's
    optimizations on vs off (as the verifier measures it) and the output's sensitivity to
    rounding: its largest change when every float input moves by one unit in the last place,
    or when every float node output is scaled by 1 ± one unit (two random draws each). A
    rewrite that only reorders float arithmetic perturbs intermediates by about that much, so
    an ill-conditioned output (LayerNorm over two nearly equal large values, or over a row of
    equal values, which divides a rounding residue by √ε) may move by as much without the
    rewrite being wrong."""
    others: list = []
    try:
        others.append(runner.run(model, Feeds([run]), optimized=True)[0])
    except OnnxoptError:
        pass
    rng = np.random.default_rng(0)
    for _ in range(2):
        jittered = {k: _ulp_jitter(v, rng) for k, v in run.items()}
        try:
            others.append(runner.run(model, Feeds([jittered]))[0])
            others.append(runner.run(_perturbed(model, rng), Feeds([run]))[0])
        except OnnxoptError:
            pass
    out: dict[str, float] = {}
    for name, a in ref[0].items():
        for other in others:
            b = other[name]
            if a.dtype.kind == "f" and a.shape == b.shape:
                fin = np.isfinite(a) & np.isfinite(b)
                diff = np.abs(a[fin].astype(np.float64) - b[fin]).max(initial=0.0)
                out[name] = max(out.get(name, 0.0), float(diff))
    return out


def _perturbed(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """``model`` with every float output of a main-graph node moved by about one unit in the
    last place of its type: each element times ``1 + eps·h``, where ``h = sin(c·i)`` of its
    position ``i`` along the last two axes (CumSum over ones; random ops are not usable: the
    newest opsets have no onnxruntime kernel for them), so that equal elements no longer stay
    equal: a reordered sum leaves such a residue, and LayerNorm over a constant row divides
    it by √ε. A tensor of unknown rank is scaled as a whole by ``1 ± eps``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *g.output]}
    nodes = []
    for node in g.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            tt = infos.get(name)
            elem = tt.elem_type if tt is not None else 0
            if not name or elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                continue
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            eps = np.finfo(dtype).eps
            raw = f"{name}__raw"
            node.output[i] = raw
            rank = len(tt.shape.dim) if tt.HasField("shape") else 0
            if rank == 0:
                factor = np.array(1 + rng.choice([-1, 1]) * eps, dtype)
                g.initializer.append(onnx.numpy_helper.from_array(factor, f"{name}__ulp"))
                nodes.append(onnx.helper.make_node("Mul", [raw, f"{name}__ulp"], [name]))
                continue
            c = float(rng.uniform(1.0, 3.0))
            consts = {
                "one": np.ones(1, dtype),
                "c": np.array(c, dtype),
                "eps": np.array(eps, dtype),
                "ax1": np.array(-1, np.int64),
                "ax2": np.array(-2, np.int64),
            }
            k = {n: f"{name}__{n}" for n in [*consts, "shape", "ones", "i1", "i2", "i", "h", "d"]}
            for n, v in consts.items():
                g.initializer.append(onnx.numpy_helper.from_array(v, k[n]))
            mk = onnx.helper.make_node
            nodes += [
                mk("Shape", [raw], [k["shape"]]),
                mk(
                    "ConstantOfShape",
                    [k["shape"]],
                    [k["ones"]],
                    value=onnx.numpy_helper.from_array(np.ones(1, dtype)),
                ),  # fmt: skip
                mk("CumSum", [k["ones"], k["ax1"]], [k["i1"]]),
            ]
            if rank >= 2:
                nodes += [mk("CumSum", [k["i1"], k["ax2"]], [k["i2"]])]
            else:
                nodes += [mk("Identity", [k["i1"]], [k["i2"]])]
            nodes += [
                mk("Mul", [k["i2"], f"{name}__c"], [k["i"]]),
                mk("Sin", [k["i"]], [k["h"]]),
                mk("Mul", [k["h"], k["eps"]], [k["d"]]),
                mk("Add", [k["d"], k["one"]], [f"{name}__f"]),
                mk("Mul", [raw, f"{name}__f"], [name]),
            ]
    del g.node[:]
    g.node.extend(nodes)
    return out


def _ulp_jitter(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if v.dtype.kind != "f":
        return v
    step = np.spacing(np.abs(v)).astype(v.dtype)
    moved = (v + rng.choice(np.array([-1, 1], v.dtype), v.shape) * step).astype(v.dtype)
    return np.where(np.isfinite(v), moved, v)


def validity(original: onnx.ModelProto, out: onnx.ModelProto) -> str:
    """Why ``out`` is not a valid stand-in for ``original`` ("" when it is)."""
    try:
        structural_check(out)
    except OnnxoptError as e:
        return first_line(e, 300)
    if [i.name for i in out.graph.input] != [i.name for i in original.graph.input]:
        return "graph inputs renamed, reordered or dropped"
    if [o.name for o in out.graph.output] != [o.name for o in original.graph.output]:
        return "graph outputs renamed or reordered"
    for a, b in zip(original.graph.output, out.graph.output):
        if a.type.tensor_type.elem_type != b.type.tensor_type.elem_type:
            return f"output '{a.name}' declared type changed"
    return ""


def declared_mismatch(model: onnx.ModelProto, run: dict[str, np.ndarray]) -> str:
    """A graph output whose declared type, rank or static dims the run contradicts."""
    for o in model.graph.output:
        tt = o.type.tensor_type
        a = run[o.name]
        if np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) != a.dtype:
            return f"output '{o.name}' is {a.dtype}, declared {tt.elem_type}"
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if len(dims) != a.ndim or any(
            d.HasField("dim_value") and d.dim_value != n for d, n in zip(dims, a.shape)
        ):
            declared = [d.dim_value if d.HasField("dim_value") else "?" for d in dims]
            return f"output '{o.name}' declared {declared} but computed {list(a.shape)}"
    return ""


def culprit(case: Case, target: str, kept: list[str], status: str) -> str:
    """The first kept pass whose pipeline prefix already gives a bad result of ``status``."""
    for i in range(len(kept)):
        try:
            out, _ = optimize(case, target, kept[: i + 1])
        except Exception:  # noqa: BLE001
            return kept[i]
        res = Outcome("", target)
        judge(case, out, res)
        if res.status == status:
            return kept[i]
    return "+".join(kept)  # only the whole pipeline fails (passes interact)


def _pass_in_traceback(e: BaseException) -> str:
    """The pass module the exception went through last, if any."""
    frames = traceback.extract_tb(e.__traceback__)
    for f in reversed(frames):
        if "/passes/" in f.filename.replace("\\", "/"):
            return f.filename.rsplit("/", 2)[-2] + "/" + f.filename.rsplit("/", 1)[-1]
    return ""


def symptom(res: Outcome, kind: str, pass_name: str = "") -> bool:
    """Whether ``res`` shows ``kind`` (a bad status, ``error`` or ``rolled back``), by
    ``pass_name`` when given (errors and rollbacks only)."""
    if kind == "error":
        return (
            any(e.startswith(f"{pass_name}:") for e in res.errors)
            if pass_name
            else bool(res.errors)
        )
    if kind == "rolled back":
        return pass_name in res.rolled_back if pass_name else bool(res.rolled_back)
    return res.status == kind


def fails_like(kind: str, target: str, pass_name: str = "") -> Callable[[Case], bool]:
    """A predicate for minimisation: the case still shows ``kind`` (see :func:`symptom`)."""

    def pred(case: Case) -> bool:
        return symptom(check(case, target, attribute=False), kind, pass_name)

    return pred
