"""The benchmark model zoo: torch models built locally (no downloads), exported to ONNX, cached.

API (shared by tests and benchmarks)::

    digits_data() -> {"X_train", "y_train", "X_test", "y_test"}   # float32 [N,1,8,8] in 0..1
    torch_model(name) -> torch.nn.Module                            # eval mode, weights cached
    build(name, exporter="torchscript" | "dynamo" | "dynamo_raw") -> Path  # zoo_dir()/<name>_<exp>.onnx
    digits_npz(path, split="test") -> Path                          # {"input": X, "labels": y}

Names: ``digits_resnet`` (trained, >= 97 % test accuracy), ``digits_mlp``, ``digits_cnn_small``,
``digits_cnn_wide`` (trained; for ensembles), ``digits_transformer`` (trained; the 8 rows as a
sequence, a 2-layer encoder), ``resnet18`` and ``mobilenetv2`` (224x224, seeded
random weights with non-trivial BatchNorm statistics), ``bert_base`` (12 layers, hidden 768,
12 heads, FFN 3072, vocab 30522, sequence 128; ~110 M parameters, ~440 MB fp32) and
``bert_small`` (4 layers, hidden 256, 4 heads, FFN 1024).

Exports: torchscript with opset 17 and ``dynamo=True`` with opset 18; ``dynamo_raw`` is
``dynamo=True, optimize=False`` (the exporter's own clean-up off: Identity, CastLike, unfolded
constants and BatchNormalization left in, as graph optimizers commonly receive them; not in
``EXPORTERS``, so ``build_all`` and the tests that loop over exporters skip it). Image models have a
dynamic batch dimension named ``batch``; BERT inputs are fixed ``[1, 128]``. Every fresh export
is checked in onnxruntime against torch (``max|ort − torch| <= 1e-3 · max(1, max|torch|)``).
Builds are cached by file name and guarded by a file lock, so parallel callers train once.
The cache is ``build/zoo`` in a source checkout, else ``~/.cache/onnxopt/zoo``; set
``ONNXOPT_ZOO_DIR`` to move it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: the source checkout this package runs from, if any (None when installed from a wheel)
_CHECKOUT = Path(__file__).resolve().parents[2]
ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None
EXPORTERS = ("torchscript", "dynamo")
RAW = "dynamo_raw"
ALL_EXPORTERS = (*EXPORTERS, RAW)
OPSET = {"torchscript": 17, "dynamo": 18, RAW: 18}
SEED = 0
INPUT = "input"  # input name of every image model
BERT_SEQ = 128


class ZooError(RuntimeError):
    """A zoo model could not be built, trained or exported."""


@dataclass(frozen=True)
class Spec:
    name: str
    make: Callable[[], Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kind: str  # "digits" | "image" | "bert"
    epochs: int = 0  # > 0: trained on digits

    @property
    def trained(self) -> bool:
        return self.epochs > 0


def _specs() -> dict[str, Spec]:
    from onnxopt.zoo import nets as n

    img = ((INPUT,), ("logits",))
    bert = (("input_ids", "attention_mask"), ("last_hidden_state", "pooler_output"))
    return {
        s.name: s
        for s in [
            Spec("digits_resnet", lambda: n.DigitsResNet(32), *img, "digits", epochs=30),
            Spec("digits_mlp", lambda: n.DigitsMLP(128), *img, "digits", epochs=100),
            Spec("digits_cnn_small", lambda: n.DigitsCNN(8), *img, "digits", epochs=60),
            Spec("digits_cnn_wide", lambda: n.DigitsCNN(48), *img, "digits", epochs=20),
            Spec("digits_transformer", n.DigitsTransformer, *img, "digits", epochs=40),
            Spec("digits_mobilenetv2", n.DigitsMobileNetV2, *img, "digits", epochs=12),
            Spec("resnet18", n.ResNet18, *img, "image"),
            Spec("mobilenetv2", n.MobileNetV2, *img, "image"),
            Spec("bert_base", lambda: n.Bert(30522, 768, 12, 12, 3072), *bert, "bert"),
            Spec("bert_small", lambda: n.Bert(30522, 256, 4, 4, 1024), *bert, "bert"),
        ]
    }


NAMES = (
    "digits_resnet",
    "digits_mlp",
    "digits_cnn_small",
    "digits_cnn_wide",
    "digits_transformer",
    "digits_mobilenetv2",
    "resnet18",
    "mobilenetv2",
    "bert_base",
    "bert_small",
)
DIGITS = tuple(n for n in NAMES if n.startswith("digits_"))


def zoo_dir() -> Path:
    default = ROOT / "build" / "zoo" if ROOT else Path.home() / ".cache" / "onnxopt" / "zoo"
    d = Path(os.environ.get("ONNXOPT_ZOO_DIR", default))
    d.mkdir(parents=True, exist_ok=True)
    return d


def spec(name: str) -> Spec:
    specs = _specs()
    if name not in specs:
        raise ZooError(f"unknown zoo model {name!r}; known: {', '.join(NAMES)}")
    return specs[name]


# --------------------------------------------------------------------------- data


def digits_data() -> dict[str, np.ndarray]:
    """scikit-learn's digits as float32 ``[N, 1, 8, 8]`` in 0..1 with int64 labels.

    The split is fixed: stratified, 25 % test, ``random_state=0`` (1347 train / 450 test).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return {
        "X_train": np.ascontiguousarray(xtr),
        "y_train": ytr,
        "X_test": np.ascontiguousarray(xte),
        "y_test": yte,
    }


def digits_npz(path: str | os.PathLike, split: str = "test") -> Path:
    """Write ``{"input": X, "labels": y}`` for ``split`` ("train" or "test") as an .npz."""
    if split not in ("train", "test"):
        raise ZooError(f"split must be 'train' or 'test', not {split!r}")
    d = digits_data()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **{INPUT: d[f"X_{split}"], "labels": d[f"y_{split}"]})
    return out


def example_inputs(name: str, batch: int = 1, seed: int = SEED) -> dict[str, np.ndarray]:
    """One batch of inputs for ``name`` (digits: test images; others: seeded random)."""
    s = spec(name)
    rng = np.random.default_rng(seed)
    if s.kind == "digits":
        return {INPUT: digits_data()["X_test"][:batch]}
    if s.kind == "image":
        return {INPUT: rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    ids = rng.integers(0, 30522, size=(batch, BERT_SEQ)).astype(np.int64)
    mask = np.ones((batch, BERT_SEQ), np.int64)
    mask[:, BERT_SEQ - 16 :] = 0  # some padding, so the mask matters
    return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- torch models


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    with open(zoo_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def torch_model(name: str) -> Any:
    """The torch module for ``name`` in eval mode; trained (digits) or seeded, weights cached."""
    import torch

    s = spec(name)
    weights = zoo_dir() / f"{name}.pt"
    torch.manual_seed(SEED)
    model = s.make()
    with _lock(name + ".pt"):
        if weights.exists():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            if s.trained:
                _train(model, s)
            elif s.kind == "image":
                from onnxopt.zoo.nets import randomize_bn

                randomize_bn(model, SEED)
            _atomic(weights, lambda p: torch.save(model.state_dict(), p))
    return model.eval()


def _train(model: Any, s: Spec) -> None:
    """Adam + cosine LR, batch 64, fixed seed, one thread. Logs the test accuracy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = digits_data()
        x, y = torch.from_numpy(d["X_train"]), torch.from_numpy(d["y_train"])
        g = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = s.epochs * ((len(x) + 63) // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
        t0 = time.perf_counter()
        model.train()
        for _ in range(s.epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                xb = x[idx]
                # augmentation: random shift by up to one pixel
                dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
                loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        acc = torch_accuracy(model)
        logger.info(
            "trained %s: test accuracy %.4f in %.1f s", s.name, acc, time.perf_counter() - t0
        )
    finally:
        torch.set_num_threads(threads)


def torch_accuracy(model: Any) -> float:
    """Top-1 accuracy of a digits torch model on the test split."""
    import torch

    d = digits_data()
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(d["X_test"])).argmax(1).numpy()
    return float((pred == d["y_test"]).mean())


# --------------------------------------------------------------------------- export


def path_for(name: str, exporter: str = "torchscript") -> Path:
    return zoo_dir() / f"{name}_{exporter}.onnx"


def build(name: str, exporter: str = "torchscript") -> Path:
    """Export ``name`` with ``exporter`` (cached) and return the .onnx path.

    Raises:
        ZooError: unknown name or exporter, or the export or its onnxruntime check failed
            (the message names the model and the exporter).
    """
    if exporter not in ALL_EXPORTERS:
        raise ZooError(f"unknown exporter {exporter!r}; use one of {', '.join(ALL_EXPORTERS)}")
    s = spec(name)
    out = path_for(name, exporter)
    if out.exists():
        return out
    model = torch_model(name)
    with _lock(out.name):
        if out.exists():
            return out
        t0 = time.perf_counter()
        try:
            _atomic(out, lambda p: _export(model, s, exporter, p))
        except ZooError:
            raise
        except Exception as e:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
            msg = text.splitlines()[0][:300] if text else ""
            raise ZooError(
                f"export of {name} with the {exporter} exporter failed: {type(e).__name__}: {msg}"
            ) from e
        logger.info("exported %s (%s) in %.1f s", name, exporter, time.perf_counter() - t0)
    return out


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """``nn.TransformerEncoderLayer``'s fused inference kernel
    (``aten::_transformer_encoder_layer_fwd``) has no ONNX export: export the plain ops."""
    import torch

    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _export(model: Any, s: Spec, exporter: str, path: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    feeds = example_inputs(s.name, batch=2 if s.kind != "bert" else 1)
    args = tuple(torch.from_numpy(feeds[k]) for k in s.inputs)
    common: dict[str, Any] = dict(
        input_names=list(s.inputs), output_names=list(s.outputs), opset_version=OPSET[exporter]
    )
    with torch.no_grad(), _mha_fastpath_off():
        if exporter == "torchscript":
            axes = {INPUT: {0: "batch"}, "logits": {0: "batch"}} if s.kind != "bert" else None
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                dynamic_axes=axes,
                do_constant_folding=True,
                **common,
            )
        else:
            shapes = None
            if s.kind != "bert":
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress
                prog = torch.onnx.export(
                    model,
                    args,
                    dynamo=True,
                    dynamic_shapes=shapes,
                    optimize=exporter != RAW,
                    verbose=False,
                    **common,
                )
            if prog is None:
                raise ZooError(f"export of {s.name} with dynamo returned nothing")
            prog.save(str(path), external_data=False)
    _check_export(model, s, exporter, path, feeds)


def _check_export(
    model: Any, s: Spec, exporter: str, path: Path, feeds: dict[str, np.ndarray]
) -> None:
    import onnx
    import torch

    from onnxopt.timing import session

    onnx.checker.check_model(str(path))
    sess = session(path, threads=2)
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = model(*(torch.from_numpy(feeds[k]) for k in s.inputs))
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    for oname, g, w in zip(s.outputs, got, want, strict=True):
        w = w.numpy()
        err = float(np.abs(g - w).max())
        scale = max(1.0, float(np.abs(w).max()))
        if g.shape != w.shape or err > 1e-3 * scale:
            raise ZooError(
                f"export of {s.name} with the {exporter} exporter: output {oname} "
                f"differs from torch (shape {g.shape} vs {w.shape}, max abs {err:.3g})"
            )


def build_all(names: tuple[str, ...] = NAMES, exporters: tuple[str, ...] = EXPORTERS) -> dict:
    """Build every (name, exporter); returns {(name, exporter): Path | ZooError}."""
    out: dict[tuple[str, str], Path | ZooError] = {}
    for n in names:
        for e in exporters:
            try:
                out[n, e] = build(n, e)
            except ZooError as err:
                out[n, e] = err
    return out


if __name__ == "__main__":  # python -m onnxopt.zoo [names...]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for (n, e), r in build_all(tuple(sys.argv[1:]) or NAMES).items():
        print(f"{n:18s} {e:12s} {r}")
