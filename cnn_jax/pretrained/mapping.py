"""Source tensors -> this codebase's ``{"params", "batch_stats"}``, one to one and shape-checked.

Every zoo model is ConvBN units (``<unit>/conv`` {kernel[, bias]} and ``<unit>/bn`` {scale, bias | mean, var}) plus
a Dense ``classifier``. A ``NameMap`` says which source layers a unit and the classifier come from (the tables in
the model files' docstrings); a ``Convention`` how a framework names and lays out those layers' tensors:
  PyTorch: conv ``weight`` OIHW (depthwise: C,1,k,k), BatchNorm ``weight``/``bias``/``running_mean``/``running_var``,
           Linear ``weight`` (out, in);
  Keras:   conv ``kernel`` HWIO (depthwise: read as k,k,1,C, see ``keras_source``), BatchNormalization ``gamma``/
           ``beta``/``moving_mean``/``moving_variance``, Dense ``kernel`` (in, out).
BatchNorm epsilon and momentum, padding and input scaling are not tensors: the model variants match them.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, FrozenSet, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from cnn_jax.pretrained.errors import WeightMappingError

Transform = Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x


class Convention(NamedTuple):
    """A framework's tensor names: (our layer kind, our leaf) -> (source leaf, transform into our layout)."""
    separator: str
    leaves: Mapping[Tuple[str, str], Tuple[str, Transform]]
    ignored: Tuple[str, ...] = ()  # source leaves with no counterpart here


TORCH = Convention(".", {
    ("conv", "kernel"): ("weight", _oihw_to_hwio), ("conv", "bias"): ("bias", _same),
    ("bn", "scale"): ("weight", _same), ("bn", "bias"): ("bias", _same),
    ("bn", "mean"): ("running_mean", _same), ("bn", "var"): ("running_var", _same),
    ("dense", "kernel"): ("weight", np.transpose), ("dense", "bias"): ("bias", _same),
}, ignored=("num_batches_tracked",))

KERAS = Convention("/", {
    ("conv", "kernel"): ("kernel", _same), ("conv", "bias"): ("bias", _same),
    ("bn", "scale"): ("gamma", _same), ("bn", "bias"): ("beta", _same),
    ("bn", "mean"): ("moving_mean", _same), ("bn", "var"): ("moving_variance", _same),
    ("dense", "kernel"): ("kernel", _same), ("dense", "bias"): ("bias", _same),
})


class NameMap(NamedTuple):
    """Where a model's layers come from: ``units(unit, all_units) -> (conv layer, bn layer)`` in the source, the
    source's classifier layer, and its naming ``convention``."""
    convention: Convention
    units: Callable[[str, FrozenSet[str]], Tuple[str, str]]
    classifier: str


def _groups(pattern: str, unit: str) -> Tuple[str, ...]:
    match = re.fullmatch(pattern, unit)
    if match is None:
        raise WeightMappingError(f"layer {unit!r} of the model has no counterpart in this source's naming")
    return match.groups()


def _torchvision_resnet(unit: str, units: FrozenSet[str]) -> Tuple[str, str]:
    if unit == "stem":
        return "conv1", "bn1"
    stage, block, conv = _groups(r"stage(\d+)_block(\d+)/(conv\d|shortcut)", unit)
    prefix = f"layer{stage}.{block}"
    if conv == "shortcut":
        return f"{prefix}.downsample.0", f"{prefix}.downsample.1"
    return f"{prefix}.{conv}", f"{prefix}.bn{conv[-1]}"


def _keras_resnet(unit: str, units: FrozenSet[str]) -> Tuple[str, str]:
    if unit == "stem":
        return "conv1_conv", "conv1_bn"
    stage, block, conv = _groups(r"stage(\d+)_block(\d+)/(conv\d|shortcut)", unit)
    prefix = f"conv{int(stage) + 1}_block{int(block) + 1}_{0 if conv == 'shortcut' else conv[-1]}"
    return f"{prefix}_conv", f"{prefix}_bn"


def _torchvision_mobilenet_v2(unit: str, units: FrozenSet[str]) -> Tuple[str, str]:
    """features.0 is the stem, features.{i+1} block i, then the head conv; inside a block's ``conv`` Sequential the
    expand and depthwise units are Conv2dNormActivation(conv .0, bn .1) and the projection a bare conv and bn."""
    blocks = sum(1 for u in units if u.endswith("/depthwise"))
    if unit in ("stem", "head_conv"):
        index = 0 if unit == "stem" else blocks + 1
        return f"features.{index}.0", f"features.{index}.1"
    block, part = _groups(r"block(\d+)/(expand|depthwise|project)", unit)
    present = [p for p in ("expand", "depthwise", "project") if f"block{block}/{p}" in units]
    prefix, position = f"features.{int(block) + 1}.conv", present.index(part)
    if part == "project":
        return f"{prefix}.{position}", f"{prefix}.{position + 1}"
    return f"{prefix}.{position}.0", f"{prefix}.{position}.1"


def _keras_mobilenet_v2(unit: str, units: FrozenSet[str]) -> Tuple[str, str]:
    fixed = {"stem": ("Conv1", "bn_Conv1"), "head_conv": ("Conv_1", "Conv_1_bn")}
    if unit in fixed:
        return fixed[unit]
    block, part = _groups(r"block(\d+)/(expand|depthwise|project)", unit)
    prefix = "expanded_conv" if block == "0" else f"block_{block}"
    return f"{prefix}_{part}", f"{prefix}_{part}_BN"


def _efficientnet_lite(unit: str, units: FrozenSet[str]) -> Tuple[str, str]:
    fixed = {"stem": ("_conv_stem", "_bn0"), "head_conv": ("_conv_head", "_bn1")}
    if unit in fixed:
        return fixed[unit]
    block, part = _groups(r"block(\d+)/(expand|depthwise|project)", unit)
    conv, bn = {"expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"),
                "project": ("_project_conv", "_bn2")}[part]
    return f"_blocks.{block}.{conv}", f"_blocks.{block}.{bn}"


TORCHVISION_RESNET = NameMap(TORCH, _torchvision_resnet, "fc")
TORCHVISION_MOBILENET_V2 = NameMap(TORCH, _torchvision_mobilenet_v2, "classifier.1")
EFFICIENTNET_LITE = NameMap(TORCH, _efficientnet_lite, "_fc")
KERAS_RESNET = NameMap(KERAS, _keras_resnet, "predictions")
KERAS_MOBILENET_V2 = NameMap(KERAS, _keras_mobilenet_v2, "predictions")


def abstract_variables(model: nn.Module, image_size: int) -> dict:
    """The shapes and dtypes of ``model``'s variables (``jax.eval_shape``: nothing is computed)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)


def _source_key(path: Tuple[str, ...], names: NameMap, units: FrozenSet[str]) -> Tuple[str, Transform]:
    *layer, leaf = path[1:]
    if layer[-1] in ("conv", "bn"):
        kind, unit = layer[-1], "/".join(layer[:-1])
        source_layer = names.units(unit, units)[0 if kind == "conv" else 1]
    elif layer == ["classifier"]:
        kind, source_layer = "dense", names.classifier
    else:
        raise WeightMappingError(f"layer {'/'.join(layer)!r} of the model has no counterpart in this source")
    source_leaf, transform = names.convention.leaves[kind, leaf]
    return source_layer + names.convention.separator + source_leaf, transform


def map_variables(target: dict, names: NameMap, tensors: Mapping[str, np.ndarray]) -> Dict[str, dict]:
    """``target``'s tree (from ``abstract_variables``) filled from ``tensors`` (source name -> array) as float32.

    Strict: each variable takes exactly one source tensor of the right shape and each source tensor (but the
    convention's ignored leaves) is taken once; otherwise ``WeightMappingError`` names the first offending key.
    """
    not_names = [key for key in tensors if not isinstance(key, str)]
    if not_names:
        raise WeightMappingError(f"source key {not_names[0]!r} is a {type(not_names[0]).__name__}, not a string: "
                                 "a state dict maps parameter names to tensors; pass `model.state_dict()`")
    flat = traverse_util.flatten_dict(target)
    units = frozenset("/".join(path[1:-2]) for path in flat if path[-2] in ("conv", "bn"))
    filled, used = {}, {}
    for path, leaf in flat.items():
        name = "/".join(path)
        key, transform = _source_key(path, names, units)
        if key not in tensors:
            sample = ", ".join(list(tensors)[:4])
            raise WeightMappingError(f"the source has no tensor {key!r} for the model's {name}: are these weights "
                                     f"for this model? (the source's keys start {sample}, ...)")
        if key in used:
            raise WeightMappingError(f"source tensor {key!r} would fill both {used[key]} and {name}")
        value = transform(np.asarray(tensors[key]))
        if value.shape != leaf.shape:
            raise WeightMappingError(f"source tensor {key!r} has shape {np.shape(tensors[key])} but the model's "
                                     f"{name} needs {leaf.shape}: the weights are for another model or width")
        filled[path], used[key] = value.astype(np.float32), name
    ignored = names.convention.ignored
    unused = [key for key in tensors
              if key not in used and key.rsplit(names.convention.separator, 1)[-1] not in ignored]
    if unused:
        raise WeightMappingError(f"{len(unused)} source tensors have no place in the model, the first {unused[0]!r}: "
                                 "the weights are for another model (or the model lacks a layer)")
    return traverse_util.unflatten_dict(filled)
