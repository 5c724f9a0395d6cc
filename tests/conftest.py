"""Shared test setup: the repo root on sys.path (for ``onnxopt.zoo``), a quiet torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
