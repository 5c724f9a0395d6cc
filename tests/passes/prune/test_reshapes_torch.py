"""GroupNorm as torch exports it (both exporters write ``nn.GroupNorm(G, C)`` as Reshape to
``[N, G, -1]``, InstanceNormalization with ``G`` scale/bias entries, Reshape back to the input's
shape and Mul/Add by gamma/beta ``[C, 1, 1]``) prunes in whole norm groups (block ``C / G``).
Run on the exports themselves; see test_reshapes for hand-made variants."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxopt.cli import app

from .support import analyze_groups, check, constants, output, prune

torch = pytest.importorskip("torch")

C, G, PER = 16, 4, 4  # channels, norm groups, channels per norm group


SHAPE = [1, 3, 16, 16]


class _Net(torch.nn.Module):
    """The issue's model: Conv(3, 16) -> GroupNorm(4, 16) -> SiLU -> Conv(16, 8) -> ReLU ->
    Conv(8, 4); ``residual`` adds a 1x1 conv of the input to the GroupNorm's output."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        nn = torch.nn
        self.residual = residual
        self.c1, self.gn = nn.Conv2d(3, C, 3, padding=1), nn.GroupNorm(G, C)
        self.skip = nn.Conv2d(3, C, 1) if residual else None
        self.c2, self.c3 = nn.Conv2d(C, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # gamma and beta far from 1 and 0, so slicing them matters
            self.gn.weight.uniform_(0.5, 1.5)
            self.gn.bias.normal_()

    def forward(self, x):
        h = self.gn(self.c1(x))
        if self.residual:
            h = h + self.skip(x)
        return self.c3(torch.relu(self.c2(torch.nn.functional.silu(h))))

    def restricted(self, x, k1: list[int], k2: list[int]):
        """The same network with only channels ``k1`` of the norm's group and ``k2`` of c2:
        every weight sliced from this one, GroupNorm over ``len(k1) / PER`` norm groups."""
        f = torch.nn.functional
        h = f.conv2d(x, self.c1.weight[k1], self.c1.bias[k1], padding=1)
        h = f.group_norm(h, len(k1) // PER, self.gn.weight[k1], self.gn.bias[k1], self.gn.eps)
        if self.residual:
            h = h + f.conv2d(x, self.skip.weight[k1], self.skip.bias[k1])
        h = f.conv2d(f.silu(h), self.c2.weight[k2][:, k1], self.c2.bias[k2], padding=1)
        return f.conv2d(torch.relu(h), self.c3.weight[:, k2], self.c3.bias)


def _export(net: torch.nn.Module, dynamo: bool, dynamic: bool = False) -> onnx.ModelProto:
    """``dynamic``: batch, height and width are named dimensions."""
    args = (torch.randn(2 if dynamic else 1, *SHAPE[1:]),)  # dynamo specializes a batch of 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = ({k: torch.export.Dim(f"d{k}") for k in (0, 2, 3)},) if dynamic else None
            return torch.onnx.export(
                net, args, input_names=["x"], dynamo=True, verbose=False, dynamic_shapes=dims
            ).model_proto
        buf = io.BytesIO()
        axes = {"x": {0: "N", 2: "H", 3: "W"}} if dynamic else None
        torch.onnx.export(net, args, buf, input_names=["x"], dynamo=False, dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def _net(residual: bool) -> _Net:
    torch.manual_seed(0)
    return _Net(residual).eval()


EXPORTS = [
    pytest.param(d, r, id=f"{'dynamo' if d else 'torchscript'}-{'residual' if r else 'plain'}")
    for d in (False, True)
    for r in (False, True)
]


def _convs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv weights by role: c1 (3x3 from the input), skip (1x1 from the input), c2, c3."""
    inits, out = constants(model), {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            from_input = w.shape[1] == 3
            out[
                ("c1" if w.shape[2] == 3 else "skip")
                if from_input
                else ("c2" if w.shape[2] == 3 else "c3")
            ] = w
    return out


def _kept_rows(pruned: np.ndarray, original: np.ndarray) -> list[int]:
    """Which rows of ``original`` the rows of ``pruned`` are (all distinct random weights)."""
    return [int(np.flatnonzero([np.array_equal(r, o) for o in original])[0]) for r in pruned]


@pytest.mark.parametrize("dynamo,residual", EXPORTS)
def test_exported_group_norm_is_whole_norm_groups(dynamo, residual):
    model = _export(_net(residual), dynamo)
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops and "GroupNormalization" not in ops
    _, groups = analyze_groups(model)
    g = next(g for g in groups.values() if g.size == C)
    assert g.prunable and g.block == PER and g.units == G, g.closed
    assert len(g.producers) == (2 if residual else 1)
    kinds = {(m.kind, m.unit) for m in g.members}
    assert {("shape", True), ("param", True), ("param", False), ("in", False)} <= kinds
    shapes = {m.node for m in g.members if m.kind == "shape"}  # the G entry, and dynamo's
    assert len(shapes) == (2 if dynamo else 1)  # constant shape back (TorchScript: Shape(x))


@pytest.mark.parametrize("dynamo,residual", EXPORTS)
def test_exported_group_norm_prunes_half_exactly(dynamo, residual):
    """Exactness: with reconstruction off, the pruned model must compute exactly the original
    network restricted to the kept channels, i.e. a torch network of the smaller widths whose
    weights are the original ones sliced to the kept channels and whose GroupNorm has the kept
    number of norm groups (``_Net.restricted``). The kept channels are read back from the
    pruned convs' weights (matched to the original rows), and must be whole norm groups. Any
    member left unsliced or sliced differently (the G entry of the Reshape, the
    InstanceNormalization's scale/bias, gamma/beta, the convs on either side) would fail to run
    or change the output. (Comparing with the original model only works when the removed norm
    groups carry nothing, see ``test_dead_norm_group_pruned_exactly``; here live ones go.)"""
    net = _net(residual)
    model = _export(net, dynamo)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    res = prune(model, x, ratio=0.5)
    assert res.changed and not res.details["reconstructed"]
    check(res.model)
    pruned = res.model
    w, w0 = _convs(pruned), _convs(model)
    k1 = _kept_rows(w["c1"], w0["c1"])
    runs = np.reshape(k1, (-1, PER))  # two whole norm groups
    assert len(runs) == G // 2 and (runs == runs[:, :1] + np.arange(PER)).all()
    assert (runs[:, 0] % PER == 0).all()
    k2 = _kept_rows(w["c2"], w0["c2"][:, k1])
    if residual:
        assert _kept_rows(w["skip"], w0["skip"]) == k1
    assert w["c3"].shape == (4, len(k2), 1, 1)

    # every coupled shape agrees: G shrank to 2, C/G·H·W per norm group stays
    inferred = onnx.shape_inference.infer_shapes(pruned, strict_mode=True, data_prop=True)
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    }
    inits = constants(pruned)
    norm = next(n for n in pruned.graph.node if n.op_type == "InstanceNormalization")
    assert dims[norm.input[0]] == [1, G // 2, PER * 16 * 16]
    assert inits[norm.input[1]].shape == inits[norm.input[2]].shape == (G // 2,)
    back = next(
        n for n in pruned.graph.node if n.op_type == "Reshape" and n.input[0] == norm.output[0]
    )
    assert dims[back.output[0]] == [1, len(k1), 16, 16]
    gamma = next(n for n in pruned.graph.node if n.input[0] == back.output[0])
    assert gamma.op_type == "Mul" and inits[gamma.input[1]].shape == (len(k1), 1, 1)

    with torch.no_grad():
        want = net.restricted(torch.from_numpy(x), k1, k2).numpy()
    np.testing.assert_allclose(output(pruned, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_exported_group_norm_with_dynamic_batch_and_size(dynamo):
    """With named N, H, W the Reshape to ``[N, G, -1]`` has no static rest, but the channel
    axis and the (named) dimensions before it fix it by the element count."""
    net = _net(True)
    model = _export(net, dynamo, dynamic=True)
    _, groups = analyze_groups(model)
    g = next(g for g in groups.values() if g.size == C)
    assert g.prunable and g.block == PER, g.closed
    x = np.random.default_rng(2).standard_normal([3, 3, 12, 20]).astype(np.float32)
    res = prune(model, x, ratio=0.5)
    check(res.model)
    w, w0 = _convs(res.model), _convs(model)
    k1 = _kept_rows(w["c1"], w0["c1"])
    k2 = _kept_rows(w["c2"], w0["c2"][:, k1])
    with torch.no_grad():
        want = net.restricted(torch.from_numpy(x), k1, k2).numpy()
    np.testing.assert_allclose(output(res.model, x), want, rtol=1e-4, atol=1e-4)


def test_dry_run_on_the_torchscript_export(tmp_path):
    path = tmp_path / "gn_model.onnx"
    onnx.save(_export(_net(False), False), path)
    res = CliRunner().invoke(
        app,
        ["prune", str(path), "--dry-run", "--ratio", "0.5", "--round-to", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "splits the channel axis" not in res.output
    row = next(ln for ln in res.output.splitlines() if "16 -> 8" in ln)
    assert "4 channels" in row and "prunable" in row, row
