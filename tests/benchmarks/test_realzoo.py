"""benchmarks/realzoo.py: the corpus lists every framework without building anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import realzoo

ROOT = Path(__file__).resolve().parents[2]


def test_list_runs_and_names_every_group():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "realzoo.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = proc.stdout.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert len(names) == len(set(names)) == len(realzoo.entries())
    groups = {ln.split()[1] for ln in lines}
    assert groups == set(realzoo.GROUPS)
    for name in ("ppocrv5_rec", "keras_mlp", "sk_digits_random_forest", "light_resnet50",
                 "resnet18_dynamo_raw", "digits_transformer_torchscript"):  # fmt: skip
        assert name in names


def test_select():
    assert [e.name for e in realzoo.select("keras_cnn,ppocrv5_det")] == ["keras_cnn", "ppocrv5_det"]
    assert {e.group for e in realzoo.select(groups="ocr,light")} == {"ocr", "light"}
    with pytest.raises(SystemExit, match="unknown corpus entries: nope"):
        realzoo.select("nope")


def test_light_models_are_there():
    for e in realzoo.select(groups="light"):
        assert e.build().is_file()
