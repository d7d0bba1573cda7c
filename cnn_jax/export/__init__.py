"""A trained model for inference: the workdir export, and portable formats made from it.

- ``workdir``: ``<workdir>/export/`` (``meta.json`` + Flax msgpack), written by every run (``save_export``) and
  read by ``load_export``.
- ``portable``: ``export_format(workdir, format)`` writes StableHLO, a TF SavedModel, TFLite (float32,
  dynamic-range int8, full int8) or ONNX beside it; the module docstring records each format's route and why.
- ``runtime``: runs those artifacts; the ONNX and TFLite runtimes never import JAX.

Names are imported on first access (module ``__getattr__``), so ``cnn_jax.export.runtime`` and the metadata
reader stay free of JAX and Flax.
"""
from cnn_jax.lazy import lazy_names

_SOURCES = {
    "meta": ("EXPORT_DIR", "FORMAT", "FORMATS", "META_FILE", "TFLITE_VARIANTS", "VARIABLES_FILE", "ExportError",
             "ExportMeta", "artifact_path", "check_format", "export_dir", "read_meta"),
    "workdir": ("load_export", "save_export"),
    "portable": ("UnsupportedOpError", "export_format"),
    "runtime": ("RUNTIMES", "load_runtime"),
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _SOURCES)
