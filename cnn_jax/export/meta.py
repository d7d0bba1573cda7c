"""What ``<workdir>/export/meta.json`` says about a model, and where portable artifacts lie, without JAX.

The portable runtimes (ONNX, TFLite, SavedModel) need the class names and image shape only; ``ExportMeta.build``
imports the zoo (and so JAX) when it is called, not before.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

EXPORT_DIR = "export"
META_FILE = "meta.json"
VARIABLES_FILE = "variables.msgpack"
FORMAT = 1
FORMATS = ("stablehlo", "saved_model", "tflite", "onnx")
TFLITE_VARIANTS = ("float32", "dynamic_range", "int8")
_FILES = {"stablehlo": "model.stablehlo", "saved_model": "saved_model", "onnx": "model.onnx"}


class ExportError(ValueError):
    """An export is missing, incomplete, corrupt, or does not fit its model."""


@dataclasses.dataclass(frozen=True)
class ExportMeta:
    """What an export says about its model: ``get_model(model_name, len(class_names), **model_kwargs)``."""
    model_name: str
    model_kwargs: Mapping[str, Any]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_shape[0], self.image_shape[1]

    def build(self):
        from cnn_jax.models import get_model

        return get_model(self.model_name, len(self.class_names), **self.model_kwargs)


def export_dir(workdir: str) -> str:
    return os.path.join(workdir, EXPORT_DIR)


def rewrite_hint(workdir: str) -> str:
    return (f"rerun the experiment with --workdir={workdir} to write it (a finished run only evaluates and "
            "exports again)")


def _tuples(value):
    """JSON lists back to the tuples Flax module fields need (they must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def read_meta(directory: str, rewrite: str) -> ExportMeta:
    """The ``meta.json`` in ``directory``; ExportError (ending with ``rewrite``, the fix) when absent or corrupt."""
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        what = "is incomplete (no meta.json)" if os.path.isdir(directory) else "does not exist"
        raise ExportError(f"the export {directory} {what}: a run writes it when training ends; {rewrite}")
    try:
        with open(path, encoding="utf-8") as file:
            meta = json.load(file)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this code reads format {FORMAT}")
        image_shape = tuple(int(s) for s in meta["image_shape"])
        if len(image_shape) != 3:
            raise ValueError(f"image_shape {image_shape} is not (height, width, channels)")
        return ExportMeta(str(meta["model"]), _tuples(dict(meta["model_kwargs"])),
                          tuple(str(name) for name in meta["class_names"]), image_shape)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ExportError(f"corrupt export metadata {path} ({type(error).__name__}: {error}); {rewrite}") from None


def check_format(fmt: str, tflite_variant: str = "float32") -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if tflite_variant not in TFLITE_VARIANTS:
        raise ExportError(f"unknown TFLite variant {tflite_variant!r}: choose one of {', '.join(TFLITE_VARIANTS)}")


def artifact_path(workdir: str, fmt: str, tflite_variant: str = "float32") -> str:
    """Where ``export_format`` writes ``fmt`` for ``workdir``, inside its ``export/``."""
    check_format(fmt, tflite_variant)
    name = f"model_{tflite_variant}.tflite" if fmt == "tflite" else _FILES[fmt]
    return os.path.join(export_dir(workdir), name)
