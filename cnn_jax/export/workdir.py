"""A trained model as inference needs it, in ``<workdir>/export/``: no training flags required to use it.

``meta.json`` holds the zoo model's name and constructor kwargs, the class names, the image shape (H, W, C) and
the SHA-256 of ``variables.msgpack`` (checked when it is read, so another export's variables are refused);
``variables.msgpack`` holds ``{"params", "batch_stats"}`` (``flax.serialization`` msgpack, float32). Input
normalization lives inside the model; its ``mean`` and ``std`` are pinned into the kwargs at export, so a later
change of a model's defaults cannot change what an exported model computes. The compute dtype is not exported:
inference runs in float32 (params are float32 either way).

Writing is durable: the new export is written into a temporary sibling directory (``meta.json`` last), every
file and the directory are fsynced, and only then is it swapped in for the old one by renames. A write that
fails or is cut short leaves the previous export as it was (and no half-written ``export/``). An ``export/`` that
is a symbolic link is refused before anything is written (`cnn_jax.workdir_files.PlantedSymlink`). Portable
artifacts made from an export (``cnn_jax.export.portable``) live in the same directory, so a re-export drops
them with the weights they were made from.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import serialization

from cnn_jax import pytrees
from cnn_jax.export import checks
from cnn_jax.export.meta import (
    FORMAT,
    META_FILE,
    VARIABLES_FILE,
    ExportError,
    ExportMeta,
    export_dir,
    meta_text,
    read_meta,
    rewrite_hint,
)
from cnn_jax.files import fsync_directory, staging_path, swap_in, write_synced
from cnn_jax.models import get_model
from cnn_jax.workdir_files import entry_path

_PINNED_FIELDS = ("mean", "std")
_SHOWN_MISMATCHES = 5


def _shape_problems(variables, model: nn.Module, image_shape) -> list[str]:
    """Differences in names and shapes between ``variables`` and those ``model`` initializes at ``image_shape``."""
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
    return pytrees.differences(pytrees.signature(variables, with_dtype=False),
                               pytrees.signature(expected, with_dtype=False), "export")


def save_export(workdir: str, model_name: str, model_kwargs: Mapping[str, Any], variables: Mapping,
                class_names: Sequence[str], image_shape: Sequence[int]) -> str:
    """Writes ``<workdir>/export/`` for the zoo model ``get_model(model_name, len(class_names), **model_kwargs)``
    with ``variables``; returns the directory. Raises ValueError when the variables do not fit that model at
    ``image_shape``, a kwarg cannot be stored as JSON, or ``export/`` is a symbolic link."""
    directory = entry_path(*os.path.split(export_dir(workdir)))  # refused before any work
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
    content = serialization.msgpack_serialize(variables)
    meta = {"format": FORMAT, "model": model_name, "model_kwargs": kwargs, "class_names": class_names,
            "image_shape": image_shape, "sha256": {VARIABLES_FILE: hashlib.sha256(content).hexdigest()}}
    try:
        text = meta_text(meta)
    except TypeError as error:
        raise ValueError(f"model_kwargs {kwargs} cannot be exported as JSON ({error}); pass plain numbers, "
                         "strings and lists") from None
    os.makedirs(workdir, exist_ok=True)
    staged = staging_path(directory, "new")
    os.mkdir(staged)
    try:
        write_synced(os.path.join(staged, VARIABLES_FILE), content)
        write_synced(os.path.join(staged, META_FILE), text.encode())
        fsync_directory(staged)
        swap_in(staged, directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return directory


def load_export(workdir: str) -> tuple[nn.Module, dict, ExportMeta]:
    """The model, its variables and the metadata exported in ``<workdir>/export/``.

    Raises ExportError naming the problem (missing, incomplete, corrupt, variables that are not the ones its
    ``meta.json`` recorded or that do not fit the model) and the fix.
    """
    directory = export_dir(workdir)
    rewrite = rewrite_hint(workdir)
    meta = read_meta(directory, rewrite)
    try:
        model = meta.build()
    except (ValueError, TypeError) as error:
        raise ExportError(f"the export {directory} names a model this code cannot build ({error}); {rewrite}") from None
    path = os.path.join(directory, VARIABLES_FILE)
    content = checks.read_verified(path, meta, "export variables", rewrite)
    try:
        variables = serialization.msgpack_restore(content)
    except Exception as error:  # noqa: BLE001 -- any failure to read the msgpack means a corrupt file
        raise ExportError(f"corrupt or missing export variables {path} ({type(error).__name__}: {error}); "
                          f"{rewrite}") from None
    problems = _shape_problems(variables, model, meta.image_shape) if isinstance(variables, dict) else ["not a dict"]
    if problems:
        raise ExportError(f"the export variables {path} do not fit {meta.model_name} ("
                          + "; ".join(problems[:_SHOWN_MISMATCHES]) + f"); {rewrite}")
    return model, jax.tree.map(jnp.asarray, variables), meta
