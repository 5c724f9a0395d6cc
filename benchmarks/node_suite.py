"""Robustness, measured: the exact pipeline over every onnx backend node test.

Each node test of the ``onnx`` wheel (``onnx/backend/test/case/node``) is written once to
``build/node_tests/node/<name>/`` (``model.onnx`` + ``test_data_set_*/input_*.pb`` /
``output_*.pb``, the layout of ``backend-test-tools generate-data``). For every test that
onnxruntime can run as it is, the PassManager runs the given passes with the test's own inputs as
feeds, and the optimized model is run again and compared with the original's outputs.

Each case lands in one bucket:
- ``optimized``: at least one pass was kept and the outputs are equal;
- ``unchanged``: no pass changed the model;
- ``changed``: the returned model's outputs differ beyond the verifier's per-dtype Exact
  tolerance, or it fails to run (a bug: the goal is zero); outputs equal within that tolerance
  but not bit-identical are counted separately (float16 kernels in onnxruntime may round a
  product differently when an operand becomes an initializer);
- ``crashed``: an exception escaped the pipeline (a bug: the goal is zero);
- ``refused``: the pipeline refused the model with a one-line OnnxoptError (e.g. opset < 7);
- ``not_runnable``: onnxruntime cannot load or run the original (or its I/O is not tensors).
``rolled_back`` counts cases (in any bucket) where the manager rolled back a pass.

Usage::

    python benchmarks/node_suite.py [--passes cleanup,fusion] [--filter shape] [--limit N]
        [--json build/node_suite.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import first_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "build" / "node_tests"

logger = logging.getLogger(__name__)


@dataclass
class CaseResult:
    name: str
    status: str
    rolled_back: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0
    identical: bool = True


def generate(out_dir: Path = DEFAULT_DIR, names: list[str] | None = None) -> Path:
    """Write the onnx node tests under ``out_dir/node``; returns that folder.

    Args:
        out_dir: the root folder (``node/`` goes under it).
        names: only these cases (the rest are not written); all of them when None. Cases
            already on disk are not written again.
    """
    node_dir = out_dir / "node"
    marker = node_dir / ".complete"
    if marker.exists() or (
        names is not None and all((node_dir / n / "model.onnx").exists() for n in names)
    ):
        return node_dir
    import warnings

    from onnx.backend.test import cmd_tools
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
        if names is not None:
            wanted = set(names)
            cases = [c for c in cases if c.name in wanted]
        original = cmd_tools.model_test.collect_testcases
        cmd_tools.model_test.collect_testcases = lambda: cases  # node cases only
        try:
            cmd_tools.generate_data(argparse.Namespace(output=str(out_dir)))
        finally:
            cmd_tools.model_test.collect_testcases = original
    if names is None:
        marker.write_text("all node tests written\n")
    return node_dir


def list_cases(node_dir: Path, pattern: str | None = None) -> list[Path]:
    cases = sorted(p for p in node_dir.iterdir() if (p / "model.onnx").exists())
    if pattern:
        cases = [p for p in cases if pattern in p.name]
    return cases


def _read_tensors(folder: Path, prefix: str) -> list[np.ndarray] | None:
    """Tensors ``prefix_0.pb, prefix_1.pb ...``; None if one is not a plain tensor."""
    out = []
    i = 0
    while (folder / f"{prefix}_{i}.pb").exists():
        data = (folder / f"{prefix}_{i}.pb").read_bytes()
        t = onnx.TensorProto()
        try:
            t.ParseFromString(data)
            if not t.name and not t.dims and not t.raw_data and t.data_type == 0:
                return None
            out.append(numpy_helper.to_array(t))
        except Exception:
            return None
        i += 1
    return out


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[Any]:
    import onnxruntime as ort

    from onnxopt.timing import session_options

    so = session_options(threads=1, optimization="disable")
    so.log_severity_level = 4  # hundreds of cases onnxruntime cannot run: no log line each
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def run_case(case: Path, passes: list[str], no_data: bool = False) -> CaseResult:
    """Run one node test through the pipeline and classify it against the test's own outputs.

    ``no_data``: the pipeline gets no feeds and verifies on inputs it synthesizes, the way
    ``onnxopt optimize IN -o OUT`` is called; the result is still judged on the test's data.
    """
    from onnxopt.data import Feeds
    from onnxopt.errors import OnnxoptError
    from onnxopt.passes.registry import manager

    t0 = time.perf_counter()
    loaded = _load_case(case)
    if isinstance(loaded, CaseResult):
        return loaded
    model, all_feeds, refs = loaded
    try:
        feeds = None if no_data else Feeds(all_feeds, source=case.name)
        out, report = manager(passes).run(model, feeds)
    except OnnxoptError as e:  # a deliberate one-line refusal (e.g. an unsupported opset)
        return CaseResult(
            case.name,
            "refused",
            detail=f"{type(e).__name__}: {_line(e)}",
            seconds=time.perf_counter() - t0,
        )
    except Exception as e:
        return CaseResult(
            case.name,
            "crashed",
            detail=f"{type(e).__name__}: {_line(e)}",
            seconds=time.perf_counter() - t0,
        )
    kept = [p.name for p in report.passes if p.status == "kept"]
    rolled = [
        p.name
        for p in report.passes
        if p.status in ("rolled back", "error") or getattr(p, "dropped_sites", None)
    ]
    status, detail, identical = _judge(model, out, all_feeds, refs, kept)
    return CaseResult(case.name, status, rolled, kept, detail, time.perf_counter() - t0, identical)


def _load_case(case: Path):
    """The test's model, its input sets and onnxruntime's outputs on them."""
    name = case.name
    try:
        model = onnx.load(str(case / "model.onnx"))
    except Exception as e:
        return CaseResult(name, "not_runnable", detail=f"load: {e}")
    names = _inputs(model)
    all_feeds = []
    for s in sorted(case.glob("test_data_set_*")):
        arrays = _read_tensors(s, "input")
        if arrays is None or len(arrays) != len(model.graph.input):
            return CaseResult(name, "not_runnable", detail="non-tensor or missing inputs")
        all_feeds.append(dict(zip([i.name for i in model.graph.input], arrays, strict=True)))
    all_feeds = [{k: v for k, v in f.items() if k in names} for f in all_feeds]
    if not all_feeds:
        return CaseResult(name, "not_runnable", detail="no test data")
    try:
        refs = [_run(model, f) for f in all_feeds]
    except Exception as e:
        return CaseResult(name, "not_runnable", detail=f"onnxruntime: {_line(e)}")
    if any(not isinstance(v, np.ndarray) for r in refs for v in r):
        return CaseResult(name, "not_runnable", detail="non-tensor outputs")
    return model, all_feeds, refs


def _judge(model, out, all_feeds, refs, kept) -> tuple[str, str, bool]:
    """(status, detail, bit-identical) of the optimized model on the test's own data."""
    from onnxopt.verify import Exact

    try:
        got = [_run(out, f) for f in all_feeds]
    except Exception as e:
        return "changed", f"optimized model fails: {_line(e)}", False
    out_names = [o.name for o in model.graph.output]
    names_ok = [o.name for o in out.graph.output] == out_names
    if not names_ok or any(len(r) != len(g) for r, g in zip(refs, got, strict=True)):
        return "changed", "output names differ", False
    ref_runs = [dict(zip(out_names, r, strict=True)) for r in refs]
    got_runs = [dict(zip(out_names, g, strict=True)) for g in got]
    verdict = Exact().check(ref_runs, got_runs)
    if not verdict.ok:
        return "changed", "; ".join(verdict.reasons)[:300], False
    identical = all(
        _identical(x, y) for r, g in zip(refs, got, strict=True) for x, y in zip(r, g, strict=True)
    )
    status = "optimized" if kept else "unchanged"
    return status, "" if identical else "within tolerance", identical


def _line(e: BaseException) -> str:
    return first_line(e, 200)


class OnnxsimWorker:
    """onnxsim in one long-lived subprocess (it may abort on a model: then it is restarted).

    Each case is simplified with onnxsim's defaults and no input given, as onnxopt is called
    with ``--no-data``; a case is refused when onnxsim raises, aborts or reports its check
    failed.
    """

    CODE = (
        "import sys, onnx, onnxsim\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        m, ok = onnxsim.simplify(onnx.load(line.strip()))\n"
        "        print('ok' if ok else 'refused: check failed', flush=True)\n"
        "    except Exception as e:\n"
        "        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]\n"
        "        print('refused: ' + type(e).__name__ + ': ' + msg, flush=True)\n"
    )

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def refuses(self, case: Path) -> str:
        """ "" when onnxsim simplifies ``case``, else why not."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.CODE],
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(str(case / "model.onnx") + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline().strip()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc = None
            return "onnxsim aborted"
        return "" if line == "ok" else line.removeprefix("refused: ")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def run_suite(
    cases: list[Path],
    passes: list[str],
    progress: bool = False,
    no_data: bool = False,
    peer: bool = False,
) -> dict[str, Any]:
    """Run every case; returns the JSON-ready summary (counts and per-case results)."""
    results: list[CaseResult] = []
    peer_refused: dict[str, str] = {}
    worker = OnnxsimWorker() if peer else None
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        results.append(run_case(case, passes, no_data))
        if worker is not None and results[-1].status != "not_runnable":
            why = worker.refuses(case)
            if why:
                peer_refused[case.name] = why
        if progress and (i + 1) % 100 == 0:
            print(
                f"  {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr
            )
    if worker is not None:
        worker.close()
    counts = Counter(r.status for r in results)
    summary = {
        "passes": passes,
        "cases": len(results),
        "runnable": len(results) - counts.get("not_runnable", 0),
        "counts": {
            k: counts.get(k, 0)
            for k in ("optimized", "unchanged", "changed", "crashed", "refused", "not_runnable")
        },
        "not_bit_identical": sum(
            1 for r in results if r.status in ("optimized", "unchanged") and not r.identical
        ),
        "rolled_back": sum(1 for r in results if r.rolled_back),
        "kept_by_pass": dict(Counter(p for r in results for p in r.kept)),
        "rolled_back_by_pass": dict(Counter(p for r in results for p in r.rolled_back)),
        "seconds": round(time.perf_counter() - t0, 1),
        "no_data": no_data,
        "results": [asdict(r) for r in results],
    }
    if peer:
        summary["onnxsim_refused"] = peer_refused
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"onnx node tests, passes {','.join(summary['passes'])}")
    table.add_column("bucket")
    table.add_column("cases", justify="right")
    for k, v in summary["counts"].items():
        table.add_row(k.replace("_", " "), str(v))
    table.add_row("rolled back (any bucket)", str(summary["rolled_back"]))
    table.add_row("equal within tolerance, not bit-identical", str(summary["not_bit_identical"]))
    table.add_row("total", str(summary["cases"]))
    console.print(table)
    if summary["kept_by_pass"]:
        console.print(
            "kept by pass: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary["kept_by_pass"].items()))
        )
    if summary["rolled_back_by_pass"]:
        console.print(
            "rolled back by pass: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary["rolled_back_by_pass"].items()))
        )
    for r in summary["results"]:
        if r["status"] in ("changed", "crashed", "refused") or r["detail"] == "within tolerance":
            console.print(
                f"[red]{r['status']}[/red] {r['name']}: {r['detail']}", markup=True, highlight=False
            )
    for r in summary["results"]:
        if r["rolled_back"]:
            console.print(
                f"rolled back in {r['name']}: {', '.join(r['rolled_back'])}", highlight=False
            )
    if "onnxsim_refused" in summary:
        console.print(
            f"onnxsim (defaults, same runnable cases) refused {len(summary['onnxsim_refused'])}"
        )
    console.print(f"{summary['seconds']} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", default="cleanup", help="comma-separated passes or families")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the node tests live")
    ap.add_argument("--filter", default=None, help="only cases whose name contains this")
    ap.add_argument("--limit", type=int, default=None, help="at most this many cases")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "node_suite.json")
    ap.add_argument(
        "--no-data",
        action="store_true",
        help="give onnxopt no inputs (it synthesizes them), as `onnxopt optimize IN "
        "-o OUT` is called; the result is still judged on the test's data",
    )
    ap.add_argument(
        "--onnxsim",
        action="store_true",
        help="also count the runnable cases onnxsim refuses (bench extra)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    node_dir = generate(args.dir)
    cases = list_cases(node_dir, args.filter)[: args.limit]
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    summary = run_suite(cases, passes, progress=True, no_data=args.no_data, peer=args.onnxsim)
    print_summary(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.json}")
    bad = summary["counts"]["changed"] + summary["counts"]["crashed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
