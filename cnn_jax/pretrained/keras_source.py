"""Keras weights as {"<layer name>/<weight name>": array}: from an in-memory model, or a weights file loaded into
the matching ``keras.applications`` model.

A file is read by Keras itself into a freshly built application (``load_weights``), never deserialized as a model:
``.h5`` (the published applications files) and ``.weights.h5`` / ``.keras`` archives hold tensors only, and
building the architecture here means no config or lambda from the file is ever run. Keras is imported only here.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from cnn_jax.pretrained.errors import CorruptWeightsError, WeightsNotFoundError


def keras_weights(model: Any) -> Dict[str, np.ndarray]:
    """Each weight of each layer of a Keras model, keyed ``layer/weight`` (tf.keras' ``:0`` suffixes dropped).

    Depthwise kernels come out as (k, k, 1, C), the HWIO layout of a grouped conv, instead of Keras' (k, k, C, 1).
    """
    tensors = {}
    for layer in model.layers:
        depthwise = type(layer).__name__ == "DepthwiseConv2D"
        for weight in layer.weights:
            leaf = weight.name.split("/")[-1].split(":")[0]
            value = np.asarray(weight)
            if depthwise and leaf in ("kernel", "depthwise_kernel"):
                leaf, value = "kernel", value.transpose(0, 1, 3, 2)
            tensors[f"{layer.name}/{leaf}"] = value
    return tensors


def load_keras_application(application: str, path: str) -> Any:
    """``keras.applications.<application>`` (with its 1000-class top, logits out) holding the weights at ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"{path} does not exist")
    import keras

    model = getattr(keras.applications, application)(weights=None, classifier_activation=None)
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 -- Keras raises OSError, ValueError, KeyError... for a bad file
        raise CorruptWeightsError(
            f"cannot load {path} into keras.applications.{application} ({type(error).__name__}: {error}). Provide "
            f"that application's weights with the top (a .h5, .weights.h5 or .keras file), complete and uncorrupted"
        ) from error
    return model
