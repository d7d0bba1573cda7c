"""Activation maximization (feature visualization): images optimized to excite a channel, a neuron or a class.

Follows Olah et al. 2017, "Feature Visualization" (Distill) and its reference code, Lucid: the image lives in a
decorrelated space, a Fourier spectrum scaled by 1 / frequency (and, for RGB, colours mixed by the square root of
ImageNet's colour covariance) squashed by a sigmoid, so plain Adam steps make natural-looking images; every step
sees the image randomly jittered, scaled and rotated, so only features robust to those survive; optional L2 and
total-variation penalties pull towards gray, smooth images.

The start, a near-gray image, can leave every unit of a layer off: on a trained MNIST model every first-stage
ReLU is negative on gray, so the plain gradient is exactly zero and the image never moves. As Lucid does, the
first ``redirect_steps`` steps run the model with *redirected* ReLUs (Lucid's ``redirected_relu_grad``): where a
ReLU layer passes no gradient at all for an image, its backward pass lets through every gradient that would raise
an inactive unit, so the optimization walks out of the dead region; afterwards, and wherever some unit of the layer
is on, the gradient is the plain one. The forward pass is never changed.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.interpret import rewrite
from cnn_jax.interpret.core import Array, trace
from cnn_jax.interpret.taps import tap

KINDS = ("channel", "neuron", "logit")
# Lucid's square root of ImageNet's RGB covariance (its ``color_correlation_svd_sqrt``), scaled so that its
# largest column has unit norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
_SPECTRUM_INIT_STD = 0.01  # Lucid's initial spectrum scale
_SPECTRUM_GAIN = 1 / 4  # Lucid's "magic" divisor, keeps the start near gray
REDIRECT_STEPS = 16  # Lucid's: its redirected ReLU gradients stop after global step 16


class Objective(NamedTuple):
    """What to maximize, one index per image optimized together: the spatial mean of a channel of ``layer``, one
    neuron of it (a channel at ``position``, the centre when None), or a class logit (``layer`` None)."""
    kind: str
    layer: Optional[str]
    indices: Tuple[int, ...]
    position: Optional[Tuple[int, int]] = None


def _indices(index: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    indices = (int(index),) if np.ndim(index) == 0 else tuple(int(i) for i in index)
    if not indices or min(indices) < 0:
        raise ValueError(f"give one or more non-negative channel or class indices, got {index!r}")
    return indices


def channel(layer: str, index: Union[int, Sequence[int]]) -> Objective:
    """The mean over positions of channel ``index`` of ``layer`` (a sown name or module path)."""
    return Objective("channel", layer, _indices(index))


def neuron(layer: str, index: Union[int, Sequence[int]], position: Optional[Tuple[int, int]] = None) -> Objective:
    """Channel ``index`` of ``layer`` at one ``(row, col)`` position (the centre by default); on a dense layer, the
    unit ``index``."""
    return Objective("neuron", layer, _indices(index), None if position is None else tuple(position))


def class_logit(index: Union[int, Sequence[int]]) -> Objective:
    """The logit of class ``index``."""
    return Objective("logit", None, _indices(index))


def check_kind(objective: Objective) -> None:
    if objective.kind not in KINDS:
        raise ValueError(f"unknown objective kind {objective.kind!r}: use channel(), neuron() or class_logit()")


def logits_and_layer(model: nn.Module, variables: Mapping, layer: Optional[str], images: Array) -> tuple:
    """(logits, the output of ``layer``) in one forward pass; (logits, None) without a layer."""
    if layer is None:
        return model.apply(variables, images), None
    return tap(model, variables, layer)(images)


def units_from(objective: Objective, logits: Array, activation: Optional[Array]) -> Array:
    """Every unit's objective value on each image, (N, units): the classes' logits, or each channel of the
    objective's layer averaged over positions (``channel``) or read at one position (``neuron``)."""
    values = logits if objective.kind == "logit" else activation
    if values.ndim == 4:
        if objective.kind == "channel":
            values = values.mean(axis=(1, 2))
        else:
            row, col = objective.position or (values.shape[1] // 2, values.shape[2] // 2)
            values = values[:, row, col]
    elif values.ndim != 2:
        raise ValueError(f"layer {objective.layer!r} has shape {values.shape}; expected (N, h, w, C) or (N, C)")
    return values.astype(jnp.float32)


def check_indices(objective: Objective, units: int) -> None:
    """Raises when an index of ``objective`` names no unit of the ``units`` its layer (or the logits) has."""
    if max(objective.indices) >= units:
        what = "classes" if objective.kind == "logit" else f"channels in layer {objective.layer!r}"
        raise ValueError(f"index {max(objective.indices)} is out of range: there are {units} {what} "
                         f"(0 to {units - 1})")


def unit_values(model: nn.Module, variables: Mapping, objective: Objective, images: Array) -> Array:
    """The objective's value for every unit of its kind and layer (every channel, or every class) on each image:
    (N, units). What ``dataset_examples`` ranks natural images by, and what the optimization raises."""
    check_kind(objective)
    layer = None if objective.kind == "logit" else objective.layer
    return units_from(objective, *logits_and_layer(model, variables, layer, images))


def objective_values(model: nn.Module, variables: Mapping, objective: Objective, images: Array) -> Array:
    """The objective of each image, (len(objective.indices),): image i scored on ``objective.indices[i]``."""
    if images.shape[0] != len(objective.indices):
        raise ValueError(f"{images.shape[0]} images for {len(objective.indices)} objective indices")
    return _selected(objective, unit_values(model, variables, objective, images))


def _selected(objective: Objective, values: Array) -> Array:
    """Image i's value on unit ``objective.indices[i]``: (N, units) -> (N,)."""
    check_indices(objective, values.shape[-1])
    return jnp.take_along_axis(values, jnp.asarray(objective.indices)[:, None], axis=1)[:, 0]


def gram_similarity(activation: Array, indices: Sequence[int]) -> Array:
    """For each image, the mean cosine similarity of its layer's Gram matrix (channel by channel, over positions)
    to those of the other images optimized for the same index, (N,); 0 for an image alone with its index. Lucid's
    ``diversity`` objective: lowering it makes images of one channel show different facets of it. A layer that is
    all zero counts as fully similar (1), so that switching the layer off never pays as diversity."""
    flat = activation.astype(jnp.float32).reshape(activation.shape[0], -1, activation.shape[-1])
    gram = jnp.einsum("npc,npd->ncd", flat, flat).reshape(flat.shape[0], -1) / flat.shape[1]
    norms = jnp.linalg.norm(gram, axis=1)
    alive = norms > 0
    unit = gram / jnp.where(alive, norms, 1)[:, None]
    cosine = jnp.where(alive[:, None] & alive[None, :], unit @ unit.T, 1.0)
    indices = np.asarray(indices)
    same = (indices[:, None] == indices[None, :]) & ~np.eye(len(indices), dtype=bool)
    return (cosine * same).sum(axis=1) / np.maximum(same.sum(axis=1), 1)


def _frequency_scale(height: int, width: int, decay: float) -> np.ndarray:
    """1 / frequency ** decay on the rfft2 grid (the zero frequency counted as the lowest non-zero one), times
    sqrt(pixels) so that the inverse FFT is unitary and pixel-scale learning rates work (as Lucid does)."""
    frequency = np.sqrt(np.fft.fftfreq(height)[:, None] ** 2 + np.fft.rfftfreq(width)[None, :] ** 2)
    scale = np.sqrt(height * width) / np.maximum(frequency, 1.0 / max(height, width)) ** decay
    return scale.astype(np.float32)


def _to_image(params: Array, image_shape: Tuple[int, int, int], decorrelate: bool, decay: float) -> Array:
    """The images in [0, 1] a parameter array stands for."""
    height, width, channels = image_shape
    if not decorrelate:
        return jax.nn.sigmoid(params)
    spectrum = (params[..., 0] + 1j * params[..., 1]) * _frequency_scale(height, width, decay)
    x = jnp.fft.irfft2(spectrum, s=(height, width)).transpose(0, 2, 3, 1) * _SPECTRUM_GAIN  # (B, H, W, C)
    if channels == 3:
        x = x @ COLOR_CORRELATION.T
    return jax.nn.sigmoid(x)


def _init_params(rng, batch: int, image_shape, decorrelate: bool) -> Array:
    height, width, channels = image_shape
    shape = (batch, channels, height, width // 2 + 1, 2) if decorrelate else (batch, height, width, channels)
    return _SPECTRUM_INIT_STD * jax.random.normal(rng, shape, jnp.float32)


def _redirected(activation, low: float, high: float):
    """``activation(x)`` (a ReLU clipping to [low, high]) whose backward pass, while ``redirect`` is true and the
    plain gradient of an image is zero everywhere in the layer, passes the loss gradient ``g`` except where it would
    push a unit further out of range (below ``low`` with g > 0, above ``high`` with g < 0: descent moves by -g)."""
    @jax.custom_vjp
    def redirected(x, redirect):
        return activation(x)

    def forward(x, redirect):
        return activation(x), (x, redirect)

    def backward(residual, g):
        x, redirect = residual
        plain = jnp.where((x > low) & (x < high), g, 0)
        outward = ((x <= low) & (g > 0)) | ((x >= high) & (g < 0))
        passing = jnp.where(outward, 0, g)
        per_image = plain.reshape(plain.shape[0], -1) if plain.ndim > 1 else plain.reshape(1, -1)
        dead = jnp.all(per_image == 0, axis=1).reshape((-1,) + (1,) * max(plain.ndim - 1, 0))
        return jnp.where((redirect > 0) & dead, passing, plain), jnp.zeros_like(redirect)

    redirected.defvjp(forward, backward)
    return redirected


_REDIRECTED = {"relu": _redirected(jax.nn.relu, 0.0, jnp.inf), "relu6": _redirected(jax.nn.relu6, 0.0, 6.0)}


def with_redirected_relus(f, redirect: Array):
    """``f`` (images -> an array or a tuple of arrays) with every ``jax.nn.relu`` and ``jax.nn.relu6`` call
    redirected while ``redirect`` (a float scalar) is positive: the same values, gradients that leave dead ReLU
    layers."""
    def redirected_f(images: Array):
        closed = trace(f, images)
        replace = {name: (lambda x, relu=relu: relu(x, redirect)) for name, relu in _REDIRECTED.items()}
        outputs = rewrite.evaluate(closed, [images], replace=replace)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(jax.eval_shape(f, images)), outputs)
    return redirected_f


def random_transform(rng, images: Array, jitter: float, scale: Tuple[float, float], degrees: float) -> Array:
    """Each image shifted by up to ``jitter`` pixels, scaled by a factor in ``scale`` and rotated by up to
    ``degrees`` about its centre: one bilinear resampling (edges reflected)."""
    batch, height, width, _ = images.shape
    k_angle, k_scale, k_shift = jax.random.split(rng, 3)
    angle = jnp.deg2rad(jax.random.uniform(k_angle, (batch, 1, 1), minval=-degrees, maxval=degrees))
    zoom = jax.random.uniform(k_scale, (batch, 1, 1), minval=scale[0], maxval=scale[1])
    shift = jax.random.uniform(k_shift, (2, batch, 1, 1), minval=-jitter, maxval=jitter)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    y, x = jnp.meshgrid(jnp.arange(height) - cy, jnp.arange(width) - cx, indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)  # each output pixel reads the inverse-transformed source point
    source_y = (cos * y - sin * x) / zoom + cy - shift[0]
    source_x = (sin * y + cos * x) / zoom + cx - shift[1]

    def resample(image, sy, sx):  # (H, W, C) -> (H, W, C)
        def plane(p):
            return jax.scipy.ndimage.map_coordinates(p, [sy, sx], order=1, mode="reflect")
        return jax.vmap(plane, in_axes=2, out_axes=2)(image)

    return jax.vmap(resample)(images, source_y, source_x)


def total_variation(images: Array) -> Array:
    """Mean absolute difference between neighbouring pixels, per image: (B,)."""
    dy = jnp.abs(images[:, 1:] - images[:, :-1]).mean(axis=(1, 2, 3))
    dx = jnp.abs(images[:, :, 1:] - images[:, :, :-1]).mean(axis=(1, 2, 3))
    return dy + dx


class Visualization(NamedTuple):
    """Optimized ``images`` (B, H, W, C) in [0, 1], and the objective of each at every step, ``history`` (steps, B)
    (measured on that step's transformed image)."""
    images: Array
    history: Array


def activation_maximization(model: nn.Module, variables: Mapping, objective: Objective,
                            image_shape: Tuple[int, int, int], rng: jax.Array, *, steps: int = 256,
                            learning_rate: float = 0.05, decorrelate: bool = True, decay: float = 1.0,
                            jitter: Optional[float] = None, scale: Tuple[float, float] = (0.9, 1.1),
                            degrees: float = 10.0, l2: float = 0.0, tv: float = 0.0, diversity: float = 0.0,
                            diversity_layer: Optional[str] = None,
                            redirect_steps: int = REDIRECT_STEPS) -> Visualization:
    """Optimizes one image per objective index with Adam to maximize
    ``objective - l2 * mean((x - 0.5)^2) - tv * total_variation(x) - diversity * gram_similarity`` under random
    transforms.

    ``image_shape`` is (H, W, C) the model accepts. ``decorrelate`` selects the Fourier/colour parameterization
    (else plain sigmoid pixels); ``decay`` is its 1 / frequency exponent. ``jitter`` is in pixels (default: a
    sixteenth of the smaller side); ``jitter=0, scale=(1, 1), degrees=0`` turns the transforms off. ``diversity``
    weighs Lucid's diversity term: repeat an index (``channel("stage2", [3, 3, 3])``) and its images are pushed
    apart in the style (Gram matrix) of the objective's layer, or of ``diversity_layer`` for a class objective.
    The first ``redirect_steps`` steps use redirected ReLU gradients (see the module's docstring; 0 turns them
    off). Jittable with the model, objective and shapes static.
    """
    check_kind(objective)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if redirect_steps < 0:
        raise ValueError(f"redirect_steps must be 0 (plain gradients) or more, got {redirect_steps}")
    if diversity < 0:
        raise ValueError(f"diversity must be 0 (off) or positive, got {diversity}")
    layer = objective.layer if objective.kind != "logit" else diversity_layer if diversity else None
    if diversity and layer is None:
        raise ValueError("a diversity term for a class objective needs diversity_layer: the layer whose style the "
                         "images should vary in (e.g. 'features')")
    if diversity and diversity_layer not in (None, layer):
        raise ValueError(f"diversity is measured at the objective's own layer {layer!r}; leave diversity_layer "
                         f"unset (got {diversity_layer!r})")
    height, width, _ = image_shape
    jitter = max(1.0, min(height, width) / 16) if jitter is None else jitter
    init_key, steps_key = jax.random.split(rng)
    params = _init_params(init_key, len(objective.indices), image_shape, decorrelate)
    optimizer = optax.adam(learning_rate)

    def scores(images):
        """(objective, similarity to the images of the same index) of each image, from one forward pass."""
        logits, activation = logits_and_layer(model, variables, layer, images)
        values = _selected(objective, units_from(objective, logits, activation))
        return values, gram_similarity(activation, objective.indices) if diversity else jnp.zeros_like(values)

    def loss(params, key, redirect):
        images = _to_image(params, image_shape, decorrelate, decay)
        values, similarity = with_redirected_relus(scores, redirect)(random_transform(key, images, jitter, scale,
                                                                                      degrees))
        penalty = l2 * ((images - 0.5) ** 2).mean(axis=(1, 2, 3)) + tv * total_variation(images)
        return (penalty + diversity * similarity - values).sum(), values

    def step(carry, inputs):
        params, state = carry
        key, index = inputs
        redirect = (index < redirect_steps).astype(jnp.float32)
        gradient, values = jax.grad(loss, has_aux=True)(params, key, redirect)
        updates, state = optimizer.update(gradient, state, params)
        return (optax.apply_updates(params, updates), state), values

    inputs = (jax.random.split(steps_key, steps), jnp.arange(steps))
    (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), inputs)
    return Visualization(_to_image(params, image_shape, decorrelate, decay), history)
