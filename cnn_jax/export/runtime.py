"""Runs a workdir's model in one of several runtimes: ``load_runtime(workdir, name).logits(images)``.

``jax`` runs the Flax model of ``export/``; ``stablehlo``, ``tf``, ``tflite`` and ``onnx`` run the artifacts
``cnn_jax.export.portable`` writes, with jax (StableHLO only), TensorFlow, ai-edge-litert's interpreter and
onnxruntime. The ``tf``, ``tflite`` and ``onnx`` runtimes never import JAX: ``keep_jax_out()`` makes an import
of jax fail in this process before TensorFlow is imported, because TF 2.21's ``tensorflow.lite.python.util``
runs ``from jax import jit`` whenever jax is installed (and catches the ImportError). This module imports
neither at the top.
"""
from __future__ import annotations

import importlib.abc
import os
import sys

import numpy as np

from cnn_jax.export.meta import ExportError, artifact_path, export_dir, read_meta, rewrite_hint

RUNTIMES = ("jax", "stablehlo", "tf", "tflite", "onnx")
JAX_FREE = ("tf", "tflite", "onnx")


class _NoJax(importlib.abc.MetaPathFinder):
    """Refuses ``jax`` and its submodules, so a library that tries it takes its no-jax path."""

    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax.") or name == "jaxlib" or name.startswith("jaxlib."):
            raise ModuleNotFoundError(f"{name} is kept out of this JAX-free runtime", name=name)
        return None


def keep_jax_out() -> None:
    """From now on ``import jax`` fails in this process (ValueError if it is imported already)."""
    if "jax" in sys.modules:
        raise ValueError("jax is imported already; a JAX-free runtime must start before it")
    if not any(isinstance(finder, _NoJax) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoJax())


def _artifact(workdir: str, fmt: str, tflite_variant: str) -> str:
    path = artifact_path(workdir, fmt, tflite_variant)
    if not os.path.exists(path):
        raise ExportError(f"no {fmt} artifact at {path}: write it with python scripts/export.py "
                          f"--workdir={workdir} --format={fmt}"
                          + (f" --tflite_variant={tflite_variant}" if fmt == "tflite" else ""))
    return path


def _corrupt(fmt: str, path: str, workdir: str, error: Exception) -> ExportError:
    reason = " ".join(str(error).split())[:300]
    return ExportError(f"corrupt {fmt} artifact {path} ({type(error).__name__}: {reason}); write it again with "
                       f"python scripts/export.py --workdir={workdir} --format={fmt}")


class Runtime:
    """``logits(images)``: float32 [b, H, W, C] pixels in [0, 1] to float32 [b, classes]; ``meta`` as exported."""

    def __init__(self, meta, logits):
        self.meta, self.logits = meta, logits


def _jax(workdir: str):
    import jax

    from cnn_jax.export import workdir as workdir_lib

    model, variables, meta = workdir_lib.load_export(workdir)
    apply = jax.jit(model.apply)
    return meta, lambda images: np.asarray(apply(variables, images))


def _stablehlo(workdir: str, path: str):
    import jax

    try:
        with open(path, "rb") as file:
            exported = jax.export.deserialize(bytearray(file.read()))
    except Exception as error:  # noqa: BLE001 -- whatever fails to deserialize is a corrupt file
        raise _corrupt("stablehlo", path, workdir, error) from None
    call = jax.jit(exported.call)
    return lambda images: np.asarray(call(images))


def _tf(workdir: str, path: str):
    import tensorflow as tf

    try:
        serving = tf.saved_model.load(path).signatures["serving_default"]
    except Exception as error:  # noqa: BLE001
        raise _corrupt("saved_model", path, workdir, error) from None
    return lambda images: serving(images=tf.constant(images))["logits"].numpy()


def _tflite(workdir: str, path: str):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=path)
        (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    except Exception as error:  # noqa: BLE001
        raise _corrupt("tflite", path, workdir, error) from None
    shape = [None]

    def logits(images):
        if shape[0] != images.shape:
            interpreter.resize_tensor_input(given["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(given["index"], np.ascontiguousarray(images, np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(taken["index"]).copy()

    return logits


def _onnx(workdir: str, path: str):
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        raise _corrupt("onnx", path, workdir, error) from None
    return lambda images: session.run(["logits"], {"images": np.ascontiguousarray(images, np.float32)})[0]


def load_runtime(workdir: str, runtime: str, tflite_variant: str = "float32") -> Runtime:
    """The model of ``workdir`` in ``runtime`` (one of ``RUNTIMES``); ExportError if it or its artifact is
    missing or corrupt. Call ``keep_jax_out()`` first for a JAX-free process."""
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "jax":
        return Runtime(*_jax(workdir))
    meta = read_meta(export_dir(workdir), rewrite_hint(workdir))
    fmt = {"tf": "saved_model"}.get(runtime, runtime)
    path = _artifact(workdir, fmt, tflite_variant)
    loader = {"stablehlo": _stablehlo, "tf": _tf, "tflite": _tflite, "onnx": _onnx}[runtime]
    return Runtime(meta, loader(workdir, path))
