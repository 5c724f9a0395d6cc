"""The memory budget, the per-pass peak, the refusal of sessions that do not fit, and the
peak of a whole run on a mid-size model (in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from onnxopt import memory
from onnxopt.errors import OptionError
from tests.onnxopt.test_weights import chain


def test_parse_budget() -> None:
    assert memory.parse_budget("8G") == 8 << 30
    assert memory.parse_budget("512m") == 512 << 20
    assert memory.parse_budget("2.5GB") == int(2.5 * (1 << 30))
    assert memory.parse_budget(1234) == 1234
    assert memory.parse_budget("50%") == int(0.5 * memory.total_ram())
    assert memory.parse_budget(None) == int(0.6 * memory.total_ram())
    for bad in ("lots", "0G", "120%"):
        with pytest.raises(OptionError, match="--max-memory"):
            memory.parse_budget(bad)


def test_peak_meter_sees_a_short_allocation() -> None:
    with memory.PeakMeter() as m:
        block = bytearray(64 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        # held over a few of the sampler's intervals: where the kernel's high-water mark
        # cannot be reset, the sampler must see it (it failed once in a full run)
        time.sleep(5 * m.interval)
        del block
    assert m.peak >= memory.rss() + (48 << 20)


def test_session_that_does_not_fit_is_refused(monkeypatch) -> None:
    from onnxopt.runner import Runner

    monkeypatch.setattr(memory, "available", lambda: 1 << 20)
    with pytest.raises(memory.MemoryBudgetError, match="not enough memory"):
        Runner().session(chain())


def test_plan_reduces_runs_and_cuts_blocks() -> None:
    m = chain()
    w = sum(memory.weights.nbytes(t) for t in m.graph.initializer)
    p = memory.Plan(m, w // 2)
    assert p.exact_runs == memory.BIG_MODEL_RUNS[0] and p.block_bytes is not None
    assert any("larger than --max-memory" in n for n in p.notes)
    assert any("block by block" in n for n in p.notes)
    assert memory.Plan(m, 100 * w).notes == []


@pytest.mark.slow
def test_mid_size_model_peak_is_bounded(tmp_path) -> None:
    """A 134 MB decoder (mapped: above 64 MB) through cleanup + fusion in a fresh process:
    peak RSS below the interpreter and libraries (measured the same way) + 1.5x the model."""
    from onnxopt.zoo.decoder import write_decoder

    src = write_decoder(tmp_path / "dec.onnx", layers=4, hidden=512, vocab=16000, seq=8)
    size = src.stat().st_size + (tmp_path / "dec.onnx.data").stat().st_size
    code = textwrap.dedent(
        f"""
        import json, resource, sys
        import onnxopt.passes.registry, onnxruntime, onnx_graphsurgeon  # the libraries alone
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if sys.argv[1] == "run":
            from onnxopt.model import load_model, save_model
            from onnxopt.passes.registry import manager
            out, rep = manager(["cleanup", "fusion"]).run(load_model({str(src)!r}))
            save_model(out, {str(tmp_path / "out.onnx")!r})
            assert all(p.status != "error" for p in rep.passes)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"base": base, "peak": peak}}))
        """
    )
    r = subprocess.run([sys.executable, "-c", code, "run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["peak"] - got["base"] <= 1.5 * size, (got, size)
