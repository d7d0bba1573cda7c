"""Converting published weights into ``{"params", "batch_stats"}``, and caching the result as an orbax checkpoint.

A cache entry is ``<cache_dir>/<name>/variables`` (orbax) plus ``source.json`` (the source file and its SHA-256),
written last, so an entry without it is incomplete and ignored. A source file is read once: the bytes hashed
(for the cache key and ``check_sha256``) are the bytes parsed.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cnn_jax import caches
from cnn_jax.pretrained.catalog import PretrainedSpec, check_sha256, pretrained_spec, sha256
from cnn_jax.pretrained.errors import PretrainedError, WeightsNotFoundError
from cnn_jax.pretrained.keras_source import keras_weights, load_keras_application
from cnn_jax.pretrained.mapping import abstract_variables, map_variables
from cnn_jax.pretrained.safetensors_file import parse_safetensors
from cnn_jax.pretrained.torch_file import parse_torch_file

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = caches.cache_dir("pretrained")
PathLike = Union[str, os.PathLike]


def _read(path: PathLike) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"{path} does not exist")
    with open(path, "rb") as file:
        return file.read()


def _parse_state_dict(path: PathLike, data: bytes) -> Dict[str, np.ndarray]:
    parse = parse_safetensors if os.fspath(path).endswith(".safetensors") else parse_torch_file
    return parse(data, os.fspath(path))


def read_state_dict(path: PathLike) -> Dict[str, np.ndarray]:
    """A PyTorch state dict from a ``.safetensors`` file or else a ``torch.save`` file, as (read-only) numpy
    arrays."""
    return _parse_state_dict(path, _read(path))


def _convert(spec: PretrainedSpec, tensors: Mapping[str, Any]) -> dict:
    target = abstract_variables(spec.build(), spec.image_size)
    return jax.tree.map(jnp.asarray, map_variables(target, spec.names, tensors))


def convert_torch_state_dict(name: str, state_dict: Mapping[str, Any]) -> dict:
    """The variables of ``pretrained_spec(name).build()`` from a PyTorch state dict (name -> array or CPU tensor)."""
    spec = pretrained_spec(name)
    if spec.keras_application:
        raise PretrainedError(f"{name} weights come from Keras: use convert_keras")
    return _convert(spec, state_dict)


def convert_keras(name: str, keras_model_or_path: Any) -> dict:
    """The variables of ``pretrained_spec(name).build()`` from a Keras model (e.g. ``keras.applications.ResNet50``
    with its top) or a weights file for it (``.h5``, ``.weights.h5``, ``.keras``)."""
    spec = pretrained_spec(name)
    if not spec.keras_application:
        raise PretrainedError(f"{name} weights come from PyTorch: use convert_torch_state_dict")
    if isinstance(keras_model_or_path, (str, os.PathLike)):
        return convert_file(name, keras_model_or_path)
    return _convert(spec, keras_weights(keras_model_or_path))


def convert_file(name: str, path: PathLike, data: Optional[bytes] = None) -> dict:
    """The variables of ``pretrained_spec(name).build()`` from a weights file of that source's format; ``data``:
    the file's bytes when the caller has read (and hashed) them already."""
    spec = pretrained_spec(name)
    data = _read(path) if data is None else data
    if spec.keras_application:
        return _convert(spec, keras_weights(load_keras_application(spec.keras_application, os.fspath(path), data)))
    return convert_torch_state_dict(name, _parse_state_dict(path, data))


def cache_path(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``load_pretrained`` caches the converted ``name`` (``~/.cache/cnn_jax/<name>`` by default)."""
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser().absolute() / name


def _read_cache(directory: Path, target: dict, digest: Optional[str]) -> Optional[dict]:
    """The cached variables, if complete and converted from a file with SHA-256 ``digest`` (None: any file)."""
    marker = directory / "source.json"
    if not marker.is_file():
        return None
    try:
        if digest is not None and json.loads(marker.read_text())["sha256"] != digest:
            return None
        with ocp.StandardCheckpointer() as checkpointer:
            return jax.tree.map(jnp.asarray, checkpointer.restore(directory / "variables", target))
    except Exception as error:  # noqa: BLE001 -- an unreadable cache is rebuilt, whatever the failure
        log.warning("cached weights in %s are unreadable (%s); converting again", directory, error)
        return None


def _write_cache(directory: Path, variables: dict, source: Path, digest: str) -> None:
    marker = directory / "source.json"
    marker.unlink(missing_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", variables, force=True)
    partial = directory / "source.json.tmp"
    partial.write_text(json.dumps({"source": str(source), "sha256": digest}))
    os.replace(partial, marker)


def load_pretrained(name: str, source: Optional[PathLike] = None,
                    cache_dir: Optional[PathLike] = None) -> Tuple[nn.Module, dict]:
    """The 1000-class ImageNet model ``name`` (see ``list_pretrained``) and its converted variables.

    ``source`` is the weights file (``.pth``, ``.safetensors``, or for ``*_keras`` a Keras file); without it, any
    cached conversion is used, else the published file where its publisher installs it (``pretrained_spec(name).
    search_path()``). A file is read once; files named as a published one are checked against its SHA-256 (see
    ``catalog``) before they are parsed. The conversion is cached under ``cache_dir/<name>`` (a private directory,
    ``caches.private_dir``; one that others can write is not used) and reused while the source is unchanged.
    Raises ``WeightsNotFoundError`` naming the file to provide when there is none. ``model.clone(num_classes=...)``
    gives a model for a new head.
    """
    spec = pretrained_spec(name)
    model = spec.build()
    directory = cache_path(name, cache_dir)
    path = None if source is None else Path(source).expanduser()
    if path is not None and not path.is_file():
        raise WeightsNotFoundError(f"{path} does not exist: to get the {name} weights, {spec.how_to_get}")
    data = None if path is None else _read(path)
    digest = None if data is None else sha256(data)
    try:
        caches.private_dir(directory)  # a directory others can write could hold planted weights
        cached = True
    except OSError as error:  # UnsafeCacheDirError included
        log.warning("not using the converted-weights cache: %s", error)
        cached = False
    variables = _read_cache(directory, abstract_variables(model, spec.image_size), digest) if cached else None
    if variables is not None:
        return model, variables
    if path is None:
        path = spec.search_path()
        if path is None or not path.is_file():
            where = f"at {path}" if path else f"installed (the {spec.package} package is missing)"
            raise WeightsNotFoundError(
                f"no {name} weights on this machine: {spec.filename} is not {where} and no "
                f"conversion is cached in {directory}. To get it, {spec.how_to_get}; then pass its path as source "
                f"(scripts/convert_weights.py --model={name} --source=PATH)")
        data = _read(path)
        digest = sha256(data)
    check_sha256(path, digest)
    variables = convert_file(name, path, data)
    if cached:
        _write_cache(directory, variables, path, digest)
    return model, variables
