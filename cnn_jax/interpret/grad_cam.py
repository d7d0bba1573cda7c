"""Grad-CAM (Selvaraju et al. 2017): a layer's channels weighted by the mean gradient of the target logit.

Follows PAIR-code ``saliency``'s ``GradCam``: ReLU(sum_k w_k A_k) with w_k the spatial mean of d logit / d A_k,
then a bilinear resize to the image. It does not rescale the map to a maximum of 1; the plots do.
"""
from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.interpret.core import Array, check_inputs
from cnn_jax.interpret.taps import layer_gradient


def grad_cam(model: nn.Module, variables: Mapping, images: Array, targets: Array, layer: str = "features", *,
             upsample: bool = True) -> Array:
    """Non-negative class-activation maps of ``layer`` (a sown name or a module path, see ``taps``) for the
    targets: (N, H, W) like the images, or (N, h, w) at the layer's own resolution when ``upsample`` is False.

    The default layer, "features", is the last convolutional map every zoo model sows; earlier layers give finer,
    less class-specific maps.
    """
    targets = check_inputs(images, targets, "grad_cam")
    activation, gradient = layer_gradient(model, variables, images, targets, layer)
    if activation.ndim != 4:
        raise ValueError(f"Grad-CAM needs a spatial (N, h, w, C) map, but layer {layer!r} gives shape "
                         f"{activation.shape}; name a convolutional layer")
    activation, gradient = activation.astype(jnp.float32), gradient.astype(jnp.float32)
    weights = gradient.mean(axis=(1, 2))  # (N, C)
    cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", activation, weights))
    if upsample:
        cam = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")
    return cam
