"""End to end on the zoo's digits members (trained in torch, exported): every mode verifies."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import run, softmax

pytestmark = pytest.mark.slow  # builds (and on a cold cache trains) three zoo models

NAMES = ("digits_mlp", "digits_cnn_small", "digits_cnn_wide")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from onnxopt.zoo import build, digits_npz

    tmp = tmp_path_factory.mktemp("ens")
    return [build(n) for n in NAMES], digits_npz(tmp / "test.npz", "test")


@pytest.mark.parametrize(
    "mode,opts",
    [
        ("average", {"on": "probs"}),
        ("vote", {}),
        ("max", {"on": "probs"}),
        ("stack", {}),
        ("weighted", {"on": "probs", "fit": True}),
    ],
)
def test_digits_modes_verify_and_do_not_lose_accuracy(zoo, mode, opts):
    paths, npz = zoo
    opts = dict(opts)
    if opts.pop("fit", False):
        opts["fit_data"] = npz
    merged, rep = merge([str(p) for p in paths], mode, data=npz, **opts)
    assert rep.verified and not rep.verification["synthesized"]
    members = [rep.accuracy[p.stem] for p in paths]
    assert rep.accuracy["ensemble"] >= max(members) - 0.5, rep.accuracy
    assert [v.name for v in merged.graph.input] == ["input"]


def test_digits_cascade_matches_member_runs(zoo):
    paths, npz = zoo
    cheap, expensive = paths[1], paths[2]
    merged, rep = merge([str(cheap), str(expensive)], "cascade", threshold=0.9, data=npz)
    x = np.load(npz)["input"][:64]
    for i in range(len(x)):
        xi = x[i : i + 1]
        yc = run(onnx.load(cheap), {"input": xi})["logits"]
        want = (
            yc if softmax(yc).max() >= 0.9 else run(onnx.load(expensive), {"input": xi})["logits"]
        )
        np.testing.assert_allclose(run(merged, {"input": xi})["logits"], want, rtol=1e-5, atol=1e-6)
    assert 0.5 < rep.params["cheap_fraction"] < 1.0


def test_digits_cli_stack(zoo, tmp_path):
    paths, npz = zoo
    out = tmp_path / "stack.onnx"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxopt",
            "merge",
            *map(str, paths),
            "-o",
            str(out),
            "--mode",
            "stack",
            "--meta",
            "ridge",
            "--data",
            str(npz),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "held-out" in p.stdout and "verified" in p.stdout
