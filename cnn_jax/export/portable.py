"""Portable formats from a workdir export: run a trained model without cnn_jax.

``export_format(workdir, format)`` reads ``<workdir>/export/`` and writes one artifact beside it
(``artifact_path``). Every format takes float32 NHWC pixels in [0, 1] (normalization is inside) with a dynamic
batch and returns logits. Every trace runs in kernel mode "portable" (``graph.portable()``), so the oneDNN custom
call (a CPU-only FFI target of this process) never reaches an artifact. The route each format takes, and why:

- ``stablehlo``: ``jax.export`` with a symbolic batch, lowered for cpu, cuda and tpu, serialized; JAX runs it
  with ``jax.export.deserialize(...).call`` and no model code.
- ``saved_model``: ``jax2tf.convert`` with a polymorphic batch. In jax 0.10 jax2tf always serializes natively,
  so the SavedModel holds one ``XlaCallModule`` op (the StableHLO); TF loads and runs it without JAX. Two
  signatures: ``serving_default`` (float32 ``images`` [b, H, W, C]) and ``serving_bytes`` (a [b] string tensor
  of encoded JPEG/PNG/GIF/BMP/WebP ``encoded``), decoded and resized inside the graph by the same
  ``cover_and_center_crop`` the project's readers use. Both return ``{"logits": [b, classes]}``.
- ``tflite``: TF 2.21's converter reads the StableHLO inside ``XlaCallModule`` but stops at the
  ``dynamic_gather`` that ``jnp`` slicing becomes under a symbolic batch, so the graph is instead written as TF
  builtin ops (``tf_lowering``) and converted from that, giving builtins only. Variants: ``float32``;
  ``dynamic_range`` (int8 weights, float activations); ``int8`` (weights and activations int8, calibrated on
  ``calibration_images``; float32 input and output, quantized inside, so callers feed the same pixels).
- ``onnx``: a lowering of the traced primitives to ONNX opset 18 (``onnx_lowering``, which says why no
  converter from the package index is used).

Artifacts are written to a temporary sibling and renamed into place, so a failed export leaves the previous
artifact as it was; then ``meta.json`` records the artifact's SHA-256, which every runtime checks before loading.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import numpy as np

from cnn_jax import files
from cnn_jax.export import graph as graph_lib
from cnn_jax.export import workdir as workdir_lib
from cnn_jax.export.graph import UnsupportedOpError
from cnn_jax.export.meta import ExportError, ExportMeta, artifact_path, check_format, record_artifact
from cnn_jax.workdir_files import EXPORT_DIR, entry_path

SERVING_BYTES = "serving_bytes"

__all__ = ["UnsupportedOpError", "export_format"]


def _apply_fn(model, variables):
    return lambda images: model.apply(variables, images)


def _stablehlo(model, variables, meta: ExportMeta, path: str) -> None:
    import jax
    import jax.numpy as jnp

    (batch,) = jax.export.symbolic_shape("b")
    with graph_lib.portable():
        exported = jax.export.export(jax.jit(_apply_fn(model, variables)), platforms=("cpu", "cuda", "tpu"))(
            jax.ShapeDtypeStruct((batch, *meta.image_shape), jnp.float32))
    with open(path, "wb") as file:
        file.write(exported.serialize())


def _saved_model(model, variables, meta: ExportMeta, path: str) -> None:
    import tensorflow as tf
    from jax.experimental import jax2tf

    from cnn_jax.tf_images import cover_and_center_crop

    (h, w, c), size = meta.image_shape, meta.image_size
    converted = jax2tf.convert(_apply_fn(model, variables), polymorphic_shapes=[f"(b, {h}, {w}, {c})"],
                               with_gradient=False)

    def decode(contents):
        image = tf.io.decode_image(contents, channels=c, expand_animations=False)
        return cover_and_center_crop(tf, image, size)

    module = tf.Module()
    module.serving = tf.function(lambda images: {"logits": converted(images)}, autograph=False,
                                 input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="images")])
    module.serving_bytes = tf.function(
        lambda encoded: module.serving(tf.cast(tf.map_fn(
            decode, encoded, fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8)), tf.float32) / 255.0),
        input_signature=[tf.TensorSpec([None], tf.string, name="encoded")], autograph=False)
    with graph_lib.portable():  # saving traces the functions again
        signatures = {"serving_default": module.serving.get_concrete_function(),
                      SERVING_BYTES: module.serving_bytes.get_concrete_function()}
        tf.saved_model.save(module, path, signatures=signatures)


def _calibration(images: Optional[np.ndarray], meta: ExportMeta) -> np.ndarray:
    if images is None or len(images) == 0:
        raise ExportError("the int8 TFLite variant needs calibration images: a few hundred training images of "
                          "the workdir's dataset (scripts/export.py reads them from its dataset)")
    images = np.asarray(images)
    if images.shape[1:] != tuple(meta.image_shape):
        raise ExportError(f"calibration images have shape {images.shape[1:]}, the model takes {meta.image_shape}")
    return (images / np.float32(255)).astype(np.float32) if images.dtype == np.uint8 else images.astype(np.float32)


def _tflite(model, variables, meta: ExportMeta, path: str, variant: str, calibration) -> None:
    import tensorflow as tf

    from cnn_jax.export import tf_lowering

    function = tf_lowering.lower(graph_lib.trace(model, variables, meta.image_shape))
    module = tf.Module()
    module.serving = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], module)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "int8":
        images = _calibration(calibration, meta)
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with open(path, "wb") as file:
        file.write(converter.convert())


def _onnx(model, variables, meta: ExportMeta, path: str) -> None:
    from cnn_jax.export import onnx_lowering

    with open(path, "wb") as file:
        file.write(onnx_lowering.lower(graph_lib.trace(model, variables, meta.image_shape)).SerializeToString())


def export_format(workdir: str, fmt: str, *, tflite_variant: str = "float32",
                  calibration_images: Optional[np.ndarray] = None) -> str:
    """Writes ``fmt`` (one of ``FORMATS``) for the export in ``workdir``; returns the artifact's path.

    ``calibration_images`` (uint8 or [0, 1] float32, [n, H, W, C]) are needed by the int8 TFLite variant only.
    Raises ExportError for an unknown format, a missing or corrupt export, and UnsupportedOpError (an
    ExportError) naming a primitive the format cannot express.
    """
    check_format(fmt, tflite_variant)
    path = artifact_path(workdir, fmt, tflite_variant)
    entry_path(workdir, EXPORT_DIR, os.path.basename(path))  # a planted link is refused, as in a run's writes
    model, variables, meta = workdir_lib.load_export(workdir)
    staged = files.staging_path(path, "new")
    try:
        if fmt == "stablehlo":
            _stablehlo(model, variables, meta, staged)
        elif fmt == "saved_model":
            _saved_model(model, variables, meta, staged)
        elif fmt == "tflite":
            _tflite(model, variables, meta, staged, tflite_variant, calibration_images)
        else:
            _onnx(model, variables, meta, staged)
        files.fsync_tree(staged)
        files.swap_in(staged, path)
        record_artifact(workdir, fmt, tflite_variant)  # the runtimes load only an artifact whose sum this records
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged)
        elif os.path.exists(staged):
            os.remove(staged)
    return path
