"""Shared test setup: the repo root on sys.path (for ``onnxopt.zoo``), a quiet torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Keras picks its backend at its first import; the zoo exports Keras models on torch (there is
# no TensorFlow here)
os.environ.setdefault("KERAS_BACKEND", "torch")


def pytest_configure(config):
    """Tiny torch trainings are much faster single-threaded on a shared 2-core machine."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``onnxopt demo`` run once, as a user runs it: (the finished process, its output folder
    with digits_cnn.opt.onnx, report.json and report.html)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    return r, out
