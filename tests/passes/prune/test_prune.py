"""The prune pass end to end: exported torch models (both exporters) pruned through the
PassManager."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

from onnxopt.data import Feeds
from onnxopt.summary import count_macs
from onnxopt.verify import Budget


def _export(module, args, names, dynamo: bool) -> onnx.ModelProto:
    import torch

    torch.set_num_threads(1)
    if dynamo:
        prog = torch.onnx.export(module, args, input_names=names, dynamo=True, verbose=False)
        return prog.model_proto
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=names, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def _tiny_block():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, hid: int = 32, heads: int = 4, ffn: int = 64) -> None:
            super().__init__()
            self.h, self.d = heads, hid // heads
            self.q, self.k, self.v, self.o = (nn.Linear(hid, hid) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(hid), nn.LayerNorm(hid)
            self.fc1, self.fc2 = nn.Linear(hid, ffn), nn.Linear(ffn, hid)

        def split(self, x):
            b, s, _ = x.shape
            return x.view(b, s, self.h, self.d).transpose(1, 2)

        def forward(self, x):
            b, s, hid = x.shape
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / self.d**0.5, dim=-1)
            x = self.ln1(x + self.o((att @ v).transpose(1, 2).reshape(b, s, hid)))
            return self.ln2(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))

    torch.manual_seed(0)
    return Block().eval()


def _cosine(a: list, b: list) -> float:
    x = np.concatenate([v.ravel() for r in a for v in r.values()])
    y = np.concatenate([v.ravel() for r in b for v in r.values()])
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_transformer_heads_and_ffn(dynamo):
    import torch

    from onnxopt.passes.registry import manager
    from onnxopt.runner import Runner

    model = _export(_tiny_block(), (torch.randn(1, 6, 32),), ["x"], dynamo)
    rng = np.random.default_rng(0)
    feeds = Feeds(
        [{"x": rng.standard_normal([1, 6, 32]).astype(np.float32)} for _ in range(48)],
        source="test",
    )
    calib, test = feeds.split(0.75)
    pm = manager(
        ["prune"],
        budget=Budget(min_cosine=0.9),
        options={"prune": {"ratio": 0.5}},
        allow_slower=True,  # correctness here; the speed gate has its own tests
    )
    out, report = pm.run(model, test, calib)
    pr = report.passes[-1]
    assert pr.status == "kept", pr.reason
    heads = [g for g in pr.details["groups"] if g["block"] == 8]
    assert len(heads) == 1 and heads[0]["channels_after"] == 16
    ffn = [g for g in pr.details["groups"] if g["channels_before"] == 64]
    assert ffn and ffn[0]["channels_after"] == 32
    assert count_macs(out)[0] < 0.8 * count_macs(model)[0]
    r = Runner()
    assert _cosine(r.run(out, test), r.run(model, test)) > 0.98


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_digits_resnet_half_flops_keeps_accuracy(exporter):
    from onnxopt import zoo
    from onnxopt.passes.registry import manager

    d = zoo.digits_data()
    model = onnx.load(zoo.build("digits_resnet", exporter=exporter))
    name = model.graph.input[0].name
    xtr, xte, yte = d["X_train"][:768], d["X_test"], d["y_test"]
    calib = Feeds([{name: xtr[i : i + 64]} for i in range(0, len(xtr), 64)], source="train")
    test = Feeds(
        [{name: xte[i : i + 90]} for i in range(0, len(xte), 90)],
        labels=[yte[i : i + 90] for i in range(0, len(xte), 90)],
        source="test",
    )
    pm = manager(
        ["prune"],
        budget=Budget(max_accuracy_drop=2.0),
        options={"prune": {"target_flops": 0.5}},
        allow_slower=True,
    )
    out, report = pm.run(model, test, calib)
    assert report.passes[-1].status == "kept"
    assert count_macs(out)[0] <= 0.5 * count_macs(model)[0]
    assert report.accuracy_original >= 97.0
    assert report.accuracy_final >= report.accuracy_original - 2.0
