"""Keras 3 on the torch backend, exported with model.export(format="onnx")."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

if importlib.util.find_spec("keras") is None:  # found, not imported: keras imports torch
    pytest.skip("keras is not installed", allow_module_level=True)

from onnxopt import zoo
from onnxopt.timing import session
from onnxopt.zoo import ZooError, keras_models


@pytest.mark.slow
@pytest.mark.parametrize("name", keras_models.NAMES)
def test_keras_model_is_trained_and_exported(name):
    path = keras_models.build(name)
    m = onnx.load(str(path))
    iname, shape = keras_models.INPUTS[name]
    (inp,) = m.graph.input
    assert inp.name == iname
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert any(n.op_type == "Cast" for n in m.graph.node)  # Keras' float->float Casts
    assert keras_models.accuracy(name, path) >= 95.0
    x = zoo.digits_data()["X_test"][:7]
    (scores,) = session(path, threads=1).run(None, keras_models.inputs(name, x))
    assert scores.shape == (7, 10)
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)  # softmax head


def test_inputs_and_errors():
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert keras_models.inputs("keras_mlp", x)["pixels"].shape == (3, 64)
    assert keras_models.inputs("keras_cnn", x)["image"].shape == (3, 8, 8, 1)
    with pytest.raises(ZooError, match="unknown Keras model 'keras_rnn'"):
        keras_models.build("keras_rnn")
