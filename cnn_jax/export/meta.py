"""What ``<workdir>/export/meta.json`` says about a model, and where portable artifacts lie, without JAX.

The portable runtimes (ONNX, TFLite, SavedModel) need the class names and image shape only; ``ExportMeta.build``
imports the zoo (and so JAX) when it is called, not before.

``meta.json`` also records the SHA-256 of each file it describes (``sha256``: file name in ``export/`` -> hex
digest): ``variables.msgpack`` when the export is written, each portable artifact when ``record_artifact`` is
called after writing it. A runtime runs an artifact only if its bytes have that sum (``cnn_jax.export.checks``),
so a changed artifact, or a ``meta.json`` from another export, is refused instead of giving wrong labels. The sums
detect corruption and mix-ups, not a hostile author, who writes the sums too: a workdir from someone else is code
to trust (see ``checks`` for what is inspected anyway).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

from cnn_jax.files import write_atomically
from cnn_jax.workdir_files import EXPORT_DIR

META_FILE = "meta.json"
VARIABLES_FILE = "variables.msgpack"
FORMAT = 2  # 2: meta.json records the files' SHA-256
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
    sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)  # file name in export/ -> hex digest

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


def _strings(value, what: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is {str(value)[:80]!r}, not a non-empty list of strings")
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
        if not isinstance(meta, dict):
            raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this code reads format {FORMAT}")
        image_shape = meta["image_shape"]
        if (not isinstance(image_shape, list) or len(image_shape) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_shape)):
            raise ValueError(f"image_shape {image_shape!r} is not (height, width, channels), positive integers")
        sums = meta["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise ValueError("sha256 is not an object of file name -> hex digest")
        return ExportMeta(str(meta["model"]), _tuples(dict(meta["model_kwargs"])),
                          tuple(_strings(meta["class_names"], "class_names")), tuple(image_shape), dict(sums))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ExportError(f"corrupt export metadata {path} ({type(error).__name__}: {error}); {rewrite}") from None


def digest(path: str) -> str:
    """The SHA-256 of a file, or of a directory (an artifact such as a SavedModel): of its files' relative paths
    and SHA-256s, in sorted order. ExportError for a link or special file inside a directory (not an artifact's)."""
    if not os.path.isdir(path):
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    tree = hashlib.sha256()
    for relative in sorted(_tree_files(path)):
        tree.update(f"{relative}\0{digest(os.path.join(path, relative))}\n".encode())
    return tree.hexdigest()


def _tree_files(root: str):
    """The relative paths of the regular files below ``root``; ExportError at a link or a special file."""
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            full = os.path.join(directory, name)
            if os.path.islink(full) or not (os.path.isdir(full) or os.path.isfile(full)):
                raise ExportError(f"{full} is a link or a special file, which no artifact holds: write the artifact "
                                  "again")
            if os.path.isfile(full):
                yield os.path.relpath(full, root)


def meta_text(meta: Mapping[str, Any]) -> str:
    """``meta.json``'s content for the dict ``meta`` (TypeError when something is not JSON)."""
    return json.dumps(meta, indent=2) + "\n"


def record_artifact(workdir: str, fmt: str, tflite_variant: str = "float32") -> None:
    """Records in ``meta.json`` the SHA-256 of the ``fmt`` artifact just written (call it after writing), replacing
    ``meta.json`` in one step."""
    path = artifact_path(workdir, fmt, tflite_variant)
    meta_path = os.path.join(export_dir(workdir), META_FILE)
    read_meta(export_dir(workdir), rewrite_hint(workdir))  # a valid meta.json, or ExportError
    with open(meta_path, encoding="utf-8") as file:
        meta = json.load(file)
    meta["sha256"][os.path.basename(path)] = digest(path)
    write_atomically(meta_path, meta_text(meta))


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
