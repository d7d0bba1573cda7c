"""A trained model as inference needs it, in ``<workdir>/export/``: no training flags required to use it.

``meta.json`` holds the zoo model's name and constructor kwargs, the class names and the image shape (H, W, C);
``variables.msgpack`` holds ``{"params", "batch_stats"}`` (``flax.serialization`` msgpack, float32). Input
normalization lives inside the model; its ``mean`` and ``std`` are pinned into the kwargs at export, so a later
change of a model's defaults cannot change what an exported model computes. The compute dtype is not exported:
inference runs in float32 (params are float32 either way).

Writing removes ``meta.json`` first and writes it last (each file atomically), so an export cut short has no
``meta.json`` and reads as incomplete, never as a mix of two runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from cnn_jax.models import get_model

EXPORT_DIR = "export"
META_FILE = "meta.json"
VARIABLES_FILE = "variables.msgpack"
FORMAT = 1
_PINNED_FIELDS = ("mean", "std")
_SHOWN_MISMATCHES = 5


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

    def build(self) -> nn.Module:
        return get_model(self.model_name, len(self.class_names), **self.model_kwargs)


def export_dir(workdir: str) -> str:
    return os.path.join(workdir, EXPORT_DIR)


def _tuples(value):
    """JSON lists back to the tuples Flax module fields need (they must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _shape_problems(variables, model: nn.Module, image_shape) -> list[str]:
    """Differences in names and shapes between ``variables`` and those ``model`` initializes at ``image_shape``."""
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))

    def shapes(tree):
        return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, want = shapes(variables), shapes(expected)
    problems = [f"{name}: only in the export" for name in sorted(have.keys() - want.keys())]
    problems += [f"{name}: missing from the export" for name in sorted(want.keys() - have.keys())]
    problems += [f"{name}: export has shape {have[name]}, the model {want[name]}"
                 for name in sorted(have.keys() & want.keys()) if have[name] != want[name]]
    return problems


def _write_atomically(path: str, content: bytes) -> None:
    partial = path + ".tmp"
    with open(partial, "wb") as file:
        file.write(content)
    os.replace(partial, path)


def save_export(workdir: str, model_name: str, model_kwargs: Mapping[str, Any], variables: Mapping,
                class_names: Sequence[str], image_shape: Sequence[int]) -> str:
    """Writes ``<workdir>/export/`` for the zoo model ``get_model(model_name, len(class_names), **model_kwargs)``
    with ``variables``; returns the directory. Raises ValueError when the variables do not fit that model at
    ``image_shape`` or a kwarg cannot be stored as JSON."""
    class_names, image_shape = [str(name) for name in class_names], [int(s) for s in image_shape]
    kwargs = {key: value for key, value in model_kwargs.items() if key != "dtype"}
    model = get_model(model_name, len(class_names), **kwargs)
    kwargs.update({field: getattr(model, field) for field in _PINNED_FIELDS
                   if field not in kwargs and hasattr(model, field)})
    variables = jax.device_get(dict(variables))
    problems = _shape_problems(variables, model, image_shape)
    if problems:
        raise ValueError(f"the variables do not fit {model_name} with {len(class_names)} classes at {image_shape}: "
                         + "; ".join(problems[:_SHOWN_MISMATCHES]))
    meta = {"format": FORMAT, "model": model_name, "model_kwargs": kwargs, "class_names": class_names,
            "image_shape": image_shape}
    try:
        meta_text = json.dumps(meta, indent=2)
    except TypeError as error:
        raise ValueError(f"model_kwargs {kwargs} cannot be exported as JSON ({error}); pass plain numbers, "
                         "strings and lists") from None
    directory = export_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    _write_atomically(os.path.join(directory, VARIABLES_FILE), serialization.msgpack_serialize(variables))
    _write_atomically(meta_path, (meta_text + "\n").encode())
    return directory


def _read_meta(directory: str, rewrite: str) -> ExportMeta:
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


def load_export(workdir: str) -> tuple[nn.Module, dict, ExportMeta]:
    """The model, its variables and the metadata exported in ``<workdir>/export/``.

    Raises ExportError naming the problem (missing, incomplete, corrupt, or variables that do not fit the model)
    and the fix.
    """
    directory = export_dir(workdir)
    rewrite = (f"rerun the experiment with --workdir={workdir} to write it (a finished run only evaluates and "
               "exports again)")
    meta = _read_meta(directory, rewrite)
    try:
        model = meta.build()
    except (ValueError, TypeError) as error:
        raise ExportError(f"the export {directory} names a model this code cannot build ({error}); {rewrite}") from None
    path = os.path.join(directory, VARIABLES_FILE)
    try:
        with open(path, "rb") as file:
            variables = serialization.msgpack_restore(file.read())
    except Exception as error:  # noqa: BLE001 -- any failure to read the msgpack means a corrupt file
        raise ExportError(f"corrupt or missing export variables {path} ({type(error).__name__}: {error}); "
                          f"{rewrite}") from None
    problems = _shape_problems(variables, model, meta.image_shape) if isinstance(variables, dict) else ["not a dict"]
    if problems:
        raise ExportError(f"the export variables {path} do not fit {meta.model_name} ("
                          + "; ".join(problems[:_SHOWN_MISMATCHES]) + f"); {rewrite}")
    return model, jax.tree.map(jnp.asarray, variables), meta
