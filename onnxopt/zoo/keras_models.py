"""Keras 3 models on the torch backend, trained on scikit-learn's digits and exported with
Keras' own ``model.export(path, format="onnx")`` (no TensorFlow anywhere).

- ``keras_mlp``: ``Sequential([Input((64,), name="pixels"), Dense(256, relu), Dropout(0.2),
  Dense(128, relu), Dropout(0.2), Dense(10, softmax)])``, input float32 ``[batch, 64]``;
- ``keras_cnn``: ``Input((8, 8, 1), name="image")`` (NHWC), Conv2D(16, 3, relu), BatchNorm,
  Conv2D(32, 3, relu), MaxPool(2), Flatten, Dense(64, relu), Dropout(0.2), Dense(10, softmax).

Both are trained with Adam on the zoo's digits split (pixels in 0..1) for 20 epochs, one torch
thread, seed 0. Keras uses the TorchScript exporter whenever the batch dimension is ``None``
(always, in practice): opset 20, a dynamic ``batch`` dimension, a float32->float32 Cast around
most ops, every Conv wrapped in NHWC<->NCHW Transposes with its bias as a separate Add, and
BatchNorm decomposed to Sub/Mul/Add. Output names are numbers that Keras picks, so read outputs
by position.

    build(name) -> Path     # cached under zoo_dir()/keras-<hash>/
    inputs(name, x) -> {input name: x reshaped}   # x: digits float32 [N, 1, 8, 8]
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.zoo import SEED, ZooError, digits_data
from onnxopt.zoo.store import cached, group_dir

BUILDER = 1
PACKAGES = ("keras", "torch", "onnx", "numpy", "scikit-learn")
EPOCHS = 20
#: name -> (input name, per-sample shape)
INPUTS = {"keras_mlp": ("pixels", (64,)), "keras_cnn": ("image", (8, 8, 1))}
NAMES = tuple(INPUTS)


def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ZooError(
            f"Keras runs on the {keras.backend.backend()!r} backend; the zoo needs "
            "KERAS_BACKEND=torch set before keras is first imported"
        )
    return keras


def _model(name: str) -> Any:
    keras = _keras()
    layers = keras.layers
    iname, shape = INPUTS[name]
    if name == "keras_mlp":
        body = [
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.2),
        ]
    else:
        body = [
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.2),
        ]
    head = [layers.Dense(10, activation="softmax")]
    return keras.Sequential([keras.Input(shape, name=iname), *body, *head], name=name)


def inputs(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's feed for digits images ``x`` (float32 ``[N, 1, 8, 8]``)."""
    if name not in INPUTS:
        raise ZooError(f"unknown Keras model {name!r}; known: {', '.join(NAMES)}")
    iname, shape = INPUTS[name]
    return {iname: np.ascontiguousarray(x.reshape(-1, *shape), dtype=np.float32)}


def train(name: str) -> Any:
    """A freshly trained Keras model (Adam, batch 64, ``EPOCHS`` epochs, one torch thread)."""
    import torch

    keras = _keras()
    keras.utils.set_random_seed(SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine, and exact
    try:
        model = _model(name)
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        d = digits_data()
        (x,) = inputs(name, d["X_train"]).values()
        model.fit(x, d["y_train"], epochs=EPOCHS, batch_size=64, verbose=0)
    finally:
        torch.set_num_threads(threads)
    return model


def build(name: str) -> Path:
    """Train ``name`` and export it with ``model.export(format="onnx")`` (cached)."""
    if name not in INPUTS:
        raise ZooError(f"unknown Keras model {name!r}; known: {', '.join(NAMES)}")
    path = group_dir("keras", BUILDER, PACKAGES) / f"{name}.onnx"

    def write(tmp: Path) -> None:
        model = train(name)
        with warnings.catch_warnings():  # TracerWarnings from Keras' own layers
            warnings.simplefilter("ignore")
            model.export(str(tmp), format="onnx", verbose=False)
        _check(name, model, tmp)

    return cached(path, write)


def _check(name: str, model: Any, path: Path) -> None:
    from onnxopt.timing import session

    (x,) = inputs(name, digits_data()["X_test"][:16]).values()
    want = np.asarray(model.predict(x, verbose=0))
    sess = session(path, threads=1)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-4:
        raise ZooError(f"Keras export of {name}: onnxruntime differs from Keras")


def accuracy(name: str, path: str | Path) -> float:
    """Test-split accuracy in percent in onnxruntime."""
    from onnxopt.timing import session

    d = digits_data()
    sess = session(path, threads=1)
    (scores,) = sess.run(None, inputs(name, d["X_test"]))
    return float((scores.argmax(-1) == d["y_test"]).mean() * 100.0)
