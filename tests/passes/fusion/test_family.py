"""The fusion family end to end: torch exports (both exporters) through cleanup,fusion, default target and --target onnxruntime."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

from onnxopt.passes.registry import manager
from onnxopt.synth import get_feeds
from tests.helpers import run

torch = pytest.importorskip("torch")


class _Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(1, 8, 3)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, groups=2)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.bn = nn.BatchNorm1d(10)
        for b in (self.b1, self.b2, self.bn):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
            b.weight.data.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.nn.functional.pad(x, (1, 1, 1, 1))
        x = torch.nn.functional.hardswish(self.b1(self.c1(x)))
        x = torch.nn.functional.pad(x, (1, 1, 1, 1))
        x = torch.nn.functional.silu(self.b2(self.c2(x)))
        x = x.mean(dim=(2, 3))
        return torch.nn.functional.gelu(self.bn(self.fc(x)))


class _Decoder(torch.nn.Module):
    """A segmentation-style head: ConvTranspose -> BN -> ReLU -> ConvTranspose, an affine,
    Sigmoid (PP-OCRv5's detector head, as torch writes it)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.t1 = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.t2 = nn.ConvTranspose2d(8, 2, 2, stride=2)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = self.t2(torch.relu(self.bn(self.t1(x))))
        return torch.sigmoid(y * 2.0 + 0.5)


def _bert():
    from onnxopt.zoo.nets import Bert

    torch.manual_seed(0)
    m = Bert(vocab=40, hidden=32, layers=2, heads=4, ffn=64, max_pos=16)
    for p in m.parameters():  # non-zero biases so the bias fusions are exercised
        torch.nn.init.normal_(p, std=0.1)
    return m


def _export(model, args, dynamo: bool, opset: int) -> onnx.ModelProto:
    torch.set_num_threads(1)
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, args, dynamo=True, opset_version=opset, verbose=False)
            return prog.model_proto
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset)
    return onnx.load_from_string(buf.getvalue())


def _optimize(model, target, int_range=None):
    feeds = get_feeds(model, int_range=int_range, runs=2)
    out, report = manager(["cleanup", "fusion"], target=target).run(model, feeds)
    bad = [
        (p.name, p.status, p.reason) for p in report.passes if p.status in ("rolled back", "error")
    ]
    assert not bad, bad
    for run_feeds in feeds.runs:
        for a, b in zip(run(model, run_feeds), run(out, run_feeds), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1, np.abs(a).max()))
    return out, report


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_cnn_both_exporters(dynamo):
    model = _export(_Cnn(), (torch.randn(1, 1, 8, 8),), dynamo, 20 if dynamo else 17)
    out, report = _optimize(model, "onnx")
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["BatchNormalization"] == 0
    if dynamo:  # TorchScript computes the pads with ConstantOfShape/Concat/...: cleanup's job
        assert ops["Pad"] == 0
    assert ops["HardSwish"] == 1
    if dynamo:  # opset 20: Gelu is a standard op
        assert ops["Gelu"] == 1
    assert len(out.graph.node) <= len(model.graph.node)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_conv_transpose_head_both_exporters(dynamo):
    """The BN after a grouped ConvTranspose and the affine after the second fold into them."""
    model = _export(_Decoder(), (torch.randn(1, 8, 6, 6),), dynamo, 18 if dynamo else 17)
    out, _ = _optimize(model, "onnx")
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops == {"ConvTranspose": 2, "Relu": 1, "Sigmoid": 1}, ops


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bert_block_both_exporters(dynamo):
    args = (torch.randint(0, 40, (1, 16)), torch.ones(1, 16, dtype=torch.int64))
    model = _export(_bert(), args, dynamo, 18 if dynamo else 17)
    out, _ = _optimize(model, "onnxruntime", int_range=(0, 2))
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["Attention"] == 2
    assert ops["SkipLayerNormalization"] >= 4
    assert ops["BiasGelu"] == 2
    assert ops["Softmax"] == 0 and ops["Erf"] == 0
    portable, _ = _optimize(model, "onnx", int_range=(0, 2))
    assert not any(n.domain == "com.microsoft" for n in portable.graph.node)
