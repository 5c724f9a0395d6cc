"""A non-editable install (as from a wheel) in a fresh virtual environment runs the demo.

The package data (the bundled example) and every subpackage must be in the wheel; an editable
install hides a missing one. The venv sees this interpreter's site-packages for the
dependencies, but onnxopt itself comes from the wheel (checked).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_runs_the_demo(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import onnxopt.passes.registry as r, onnxopt; "
            "print(onnxopt.__file__); print(r.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert all(str(venv) in line for line in where.stdout.split()), where.stdout
    demo = subprocess.run(
        [str(venv / "bin" / "onnxopt"), "demo", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-3000:]
    assert (tmp_path / "d" / "digits_cnn.opt.onnx").is_file()
    assert "Traceback" not in demo.stdout + demo.stderr
