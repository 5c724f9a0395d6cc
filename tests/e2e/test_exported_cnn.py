"""End to end: a torch-exported CNN with BatchNorm and a residual, both exporters, default pipeline."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxopt import optimize
from onnxopt.runner import Runner
from onnxopt.summary import ModelSummary
from onnxopt.verify import Exact


def residual_cnn():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.b2 = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(8 * 8 * 8, 5)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(y + self.b2(self.c2(y)))
            return self.fc(self.drop(torch.flatten(y, 1)))

    torch.manual_seed(0)
    net = Net()
    for bn in (net.b1, net.b2):  # non-trivial running stats
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_default_pipeline_on_exported_cnn(tmp_path, dynamo):
    from onnxopt.export import export_torch

    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "cnn.onnx"
    original = export_torch(
        residual_cnn(), x, path, input_names=["x"], output_names=["y"], dynamo=dynamo
    )
    feeds = {"x": np.random.default_rng(0).standard_normal((6, 2, 3, 8, 8)).astype(np.float32)}
    out, report = optimize(path, data=feeds)
    assert report.passes, "no pass ran"
    assert not [p for p in report.passes if p.status == "error"], report.to_json()
    before, after = ModelSummary.of(original), ModelSummary.of(out)
    assert after.nodes <= before.nodes
    # the graph's interface is unchanged and the outputs are exact
    assert [o.name for o in out.graph.output] == ["y"]
    assert [i.name for i in out.graph.input] == ["x"]
    from onnxopt.data import load_feeds

    f = load_feeds(feeds, original)
    r = Runner()
    assert Exact().check(r.run(original, f), r.run(out, f)).ok
