"""Naming a layer inside a Flax model, reading its output, and differentiating with respect to it.

A layer is named either by a value the model sows into its "intermediates" collection (the zoo sows "stage1",
"stage2", ... and "features", the last convolutional map) or by a submodule's path, its names joined by "/"
(e.g. "stage2_block0/conv1/conv"), whose ``__call__`` output Flax's ``capture_intermediates`` records.
``tap`` traces the forward pass once and, through ``rewrite.evaluate``, adds a perturbation to that value where it
is computed: the gradient of the logits with respect to a zero perturbation is the gradient with respect to the
layer, and the model needs no change to allow it. The model runs as written, each module computing its own output:
in ``core.SEPARATE``, the kernel mode ``core.trace`` traces in, whether the layer is read or perturbed.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.interpret import rewrite
from cnn_jax.interpret.core import SEPARATE, Array, selected_logits, trace

_CAPTURED = "__call__"  # where capture_intermediates stores a module's output


def _path(layer: str) -> Tuple[str, ...]:
    path = tuple(part for part in str(layer).split("/") if part)
    if not path:
        raise ValueError(f"a layer name is a sown name like 'features' or a module path like 'stage2_block0/conv1', "
                         f"got {layer!r}")
    return path


def _lookup(intermediates: Mapping, path: Tuple[str, ...]):
    """The value sown as, or the captured output of the module at, ``path``; None when there is none."""
    node = intermediates
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, Mapping):
        node = node.get(_CAPTURED)
    if not isinstance(node, tuple):
        return None
    if len(node) != 1:
        raise ValueError(f"layer {'/'.join(path)!r} was recorded {len(node)} times in one forward pass (a module "
                         "called repeatedly, or a name sown repeatedly); name a layer computed once")
    if not hasattr(node[0], "shape"):
        raise ValueError(f"layer {'/'.join(path)!r} gives a {type(node[0]).__name__}, not an array")
    return node[0]


def _forward(model: nn.Module, layer: str) -> Callable:
    """``(variables, images) -> (logits, the layer's output)`` in inference mode."""
    path = _path(layer)

    def forward(variables, images):
        with ops.kernels(SEPARATE):  # each module computes its own output, which is what is read
            logits, state = model.apply(variables, images, mutable=["intermediates"],
                                        capture_intermediates=lambda module, method: module.path == path
                                        and method == _CAPTURED)
        activation = _lookup(state.get("intermediates", {}), path)
        if activation is None:
            raise ValueError(f"{type(model).__name__} has no layer {layer!r}. Sown names: "
                             f"{sown_layers(model, variables, images)}; convolutions (module paths): "
                             f"{conv_layers(model, variables, images)}")
        return logits, activation

    return forward


def tap(model: nn.Module, variables: Mapping, layer: str) -> Callable[..., Tuple[Array, Array]]:
    """``run(images, perturbation=None) -> (logits, activation)``: the model's logits and the output of ``layer``,
    with ``perturbation`` (shaped like the activation) added to that output inside the forward pass.

    Differentiate through ``perturbation`` at zeros to get d logits / d activation. Jittable and differentiable.
    """
    forward = _forward(model, layer)

    def run(images: Array, perturbation: Optional[Array] = None) -> Tuple[Array, Array]:
        if perturbation is None:
            return forward(variables, images)
        args = (variables, images)
        shapes, closed = jax.eval_shape(forward, *args), trace(forward, *args)
        activation_shape = shapes[1]
        if perturbation.shape != activation_shape.shape:
            raise ValueError(f"layer {layer!r} has shape {activation_shape.shape}; the perturbation has "
                             f"{perturbation.shape}")
        outputs = rewrite.evaluate(closed, jax.tree_util.tree_leaves(args),
                                   add={closed.jaxpr.outvars[-1]: perturbation.astype(activation_shape.dtype)})
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outputs)

    return run


def layer_gradient(model: nn.Module, variables: Mapping, images: Array, targets: Array,
                   layer: str) -> Tuple[Array, Array]:
    """(activation, d logits[i, targets[i]] / d activation) of ``layer`` for every image."""
    run = tap(model, variables, layer)
    shape = jax.eval_shape(run, images)[1]

    def score(perturbation):
        logits, activation = run(images, perturbation)
        return selected_logits(logits, targets).sum(), activation

    gradient, activation = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return activation, gradient


def sown_layers(model: nn.Module, variables: Mapping, images: Array) -> list:
    """The names ``model`` sows into "intermediates" (nested ones as paths), in the order it sows them."""
    names = []

    def collect(node, prefix):
        for key, value in node.items():
            if isinstance(value, Mapping):
                collect(value, prefix + (key,))
            else:
                names.append("/".join(prefix + (key,)))

    def forward(v, x):
        collect(model.apply(v, x, mutable=["intermediates"])[1].get("intermediates", {}), ())

    jax.eval_shape(forward, variables, images)
    return names


def conv_layers(model: nn.Module, variables: Mapping, images: Array) -> list:
    """Paths of the submodules that own a 4-d "kernel" (the convolutions), in the order the forward pass calls them."""
    paths = []

    def record(next_fun, args, kwargs, context):
        kernel = context.module.variables.get("params", {}).get("kernel")
        if context.method_name == _CAPTURED and getattr(kernel, "ndim", 0) == 4:
            path = "/".join(context.module.path)
            if path not in paths:
                paths.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
    return paths
