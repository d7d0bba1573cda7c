"""Runs a workdir's model in one of several runtimes: ``load_runtime(workdir, name).logits(images)``.

``jax`` runs the Flax model of ``export/``; ``stablehlo``, ``tf``, ``tflite`` and ``onnx`` run the artifacts
``cnn_jax.export.portable`` writes, with jax (StableHLO only), TensorFlow, ai-edge-litert's interpreter and
onnxruntime. The ``tf``, ``tflite`` and ``onnx`` runtimes never import JAX: ``keep_jax_out()`` makes an import
of jax fail in this process before TensorFlow is imported, because TF 2.21's ``tensorflow.lite.python.util``
runs ``from jax import jit`` whenever jax is installed (and catches the ImportError). This module imports
neither at the top.

Before an artifact runs, ``cnn_jax.export.checks`` verifies its bytes against the SHA-256 that ``meta.json``
recorded (the bytes checked are the bytes loaded) and inspects its operations; then its input and output shapes
must be the image shape and class count of ``meta.json``. Each failure is an ExportError naming the fix.
"""
from __future__ import annotations

import importlib.abc
import os
import sys

import numpy as np

from cnn_jax.export import checks
from cnn_jax.export.meta import ExportError, ExportMeta, artifact_path, export_dir, read_meta, rewrite_hint

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
        raise ExportError(f"no {fmt} artifact at {path}: {_fix(workdir, fmt, tflite_variant, 'write it')}")
    return path


def _fix(workdir: str, fmt: str, tflite_variant: str, verb: str = "write it again") -> str:
    return (f"{verb} with python scripts/export.py --workdir={workdir} --format={fmt}"
            + (f" --tflite_variant={tflite_variant}" if fmt == "tflite" else ""))


def _corrupt(fmt: str, path: str, fix: str, error: Exception) -> ExportError:
    reason = " ".join(str(error).split())[:300]
    return ExportError(f"corrupt {fmt} artifact {path} ({type(error).__name__}: {reason}); {fix}")


def _check_shapes(fmt: str, path: str, meta: ExportMeta, image_shape, classes, fix: str) -> None:
    """ExportError unless the artifact takes [batch, *meta.image_shape] and gives [batch, len(class_names)]."""
    image_shape, classes = _dims(image_shape), _dims([classes])[0]
    if image_shape != tuple(meta.image_shape) or classes != len(meta.class_names):
        raise ExportError(f"the {fmt} artifact {path} takes images of shape {image_shape} and gives {classes} "
                          f"classes, but its meta.json says {tuple(meta.image_shape)} and {len(meta.class_names)} "
                          f"classes: the metadata is not this artifact's; {fix}")


def _dims(values) -> tuple:
    """Dimensions as ints where they are integers (numpy's included), else as given (a symbolic or unknown one)."""
    return tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in values)


class Runtime:
    """``logits(images)``: float32 [b, H, W, C] pixels in [0, 1] to float32 [b, classes]; ``meta`` as exported."""

    def __init__(self, meta: ExportMeta, logits):
        self.meta, self._logits = meta, logits

    def logits(self, images):
        logits = self._logits(images)
        if logits.shape != (len(images), len(self.meta.class_names)):
            raise ExportError(f"the model gave logits of shape {logits.shape} for {len(images)} images, but its "
                              f"meta.json names {len(self.meta.class_names)} classes: export the model again")
        return logits


def _jax(workdir: str):
    import jax

    from cnn_jax.export import workdir as workdir_lib
    from cnn_jax.fused import fused_apply

    model, variables, meta = workdir_lib.load_export(workdir)
    apply = jax.jit(fused_apply(model))  # evaluation as the engine runs it
    return meta, lambda images: np.asarray(apply(variables, images))


def _stablehlo(path: str, meta: ExportMeta, fix: str):
    import jax

    content = checks.read_verified(path, meta, "stablehlo artifact", fix)
    try:
        exported = jax.export.deserialize(bytearray(content))
    except Exception as error:  # noqa: BLE001 -- whatever fails to deserialize is a corrupt file
        raise _corrupt("stablehlo", path, fix, error) from None
    checks.check_stablehlo(exported, path)
    given, taken = exported.in_avals, exported.out_avals
    _check_shapes("stablehlo", path, meta, given[0].shape[1:] if len(given) == 1 else (),
                  taken[0].shape[-1] if len(taken) == 1 else None, fix)
    call = jax.jit(exported.call)
    return lambda images: np.asarray(call(images))


def _tf(path: str, meta: ExportMeta, fix: str):
    import tensorflow as tf

    with checks.verified_copy(path, meta, "saved_model artifact", fix) as copy:
        checks.check_saved_model(copy, path)
        try:
            loaded = tf.saved_model.load(copy)
            serving = loaded.signatures["serving_default"]
            given = serving.structured_input_signature[1]["images"].shape
            taken = serving.structured_outputs["logits"].shape
        except Exception as error:  # noqa: BLE001
            raise _corrupt("saved_model", path, fix, error) from None
    _check_shapes("saved_model", path, meta, given[1:], taken[-1], fix)
    return lambda images, loaded=loaded: serving(images=tf.constant(images))["logits"].numpy()


def _tflite(path: str, meta: ExportMeta, fix: str):
    from ai_edge_litert.interpreter import Interpreter

    content = checks.read_verified(path, meta, "tflite artifact", fix)
    checks.check_tflite(content, path)
    try:
        interpreter = Interpreter(model_content=content)
        (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    except Exception as error:  # noqa: BLE001
        raise _corrupt("tflite", path, fix, error) from None
    _check_shapes("tflite", path, meta, given["shape_signature"][1:], taken["shape_signature"][-1], fix)
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


def _onnx(path: str, meta: ExportMeta, fix: str):
    import onnxruntime

    content = checks.read_verified(path, meta, "onnx artifact", fix)
    checks.check_onnx(content, path)
    try:
        session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        (given,), (taken,) = session.get_inputs(), session.get_outputs()
    except Exception as error:  # noqa: BLE001
        raise _corrupt("onnx", path, fix, error) from None
    _check_shapes("onnx", path, meta, given.shape[1:], taken.shape[-1], fix)
    return lambda images: session.run([taken.name], {given.name: np.ascontiguousarray(images, np.float32)})[0]


def load_runtime(workdir: str, runtime: str, tflite_variant: str = "float32") -> Runtime:
    """The model of ``workdir`` in ``runtime`` (one of ``RUNTIMES``); ExportError if it or its artifact is
    missing, corrupt, not the one its ``meta.json`` recorded, or holds operations no export of this code holds.
    Call ``keep_jax_out()`` first for a JAX-free process."""
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "jax":
        return Runtime(*_jax(workdir))
    meta = read_meta(export_dir(workdir), rewrite_hint(workdir))
    fmt = {"tf": "saved_model"}.get(runtime, runtime)
    path = _artifact(workdir, fmt, tflite_variant)
    loader = {"stablehlo": _stablehlo, "tf": _tf, "tflite": _tflite, "onnx": _onnx}[runtime]
    return Runtime(meta, loader(path, meta, _fix(workdir, fmt, tflite_variant)))
