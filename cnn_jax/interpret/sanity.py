"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): does a map depend on what the model learned?

A method whose maps barely change when the trained weights are replaced by random ones, or when the model was
trained on shuffled labels, explains the input (edges, the digit's shape), not the model. Two tests:

- **Model-parameter randomization.** The layers are re-initialized from the top down, cumulatively
  (``cascading``), or one at a time (``independent``), with the model's own initializers; the maps of each
  randomized model are compared with the trained model's. BatchNorm statistics stay as trained.
- **Data randomization.** The maps of a model trained on shuffled labels are compared with the real model's.

Maps are compared per image by the Spearman rank correlation of the maps (summed over channels), of their absolute
values, and by the SSIM of the absolute maps scaled to [0, 1] by their maximum, as the paper does. The metrics are
jitted and batched; ``spearman`` and ``ssim`` match ``scipy.stats.spearmanr`` and scikit-image's
``structural_similarity`` (7x7 uniform window, sample covariance, data range 1).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnn_jax.interpret.core import Array, check_inputs, check_targets
from cnn_jax.interpret.methods import Settings, attribution, check_methods

METRICS = ("spearman", "spearman_abs", "ssim")
_SSIM_WINDOW, _K1, _K2 = 7, 0.01, 0.03  # scikit-image's defaults (Wang et al. 2004's constants)


def _flat_maps(maps: Array) -> Array:
    """(N, H, W, C) or (N, H, W) maps as (N, H, W), summed over channels."""
    maps = jnp.asarray(maps, jnp.float32)
    return maps.sum(axis=-1) if maps.ndim == 4 else maps


def spearman(a: Array, b: Array) -> Array:
    """Spearman's rank correlation of each pair of maps (N, ...) -> (N,): Pearson's of their ranks, ties given the
    mean rank. NaN where either map is constant (as scipy's), e.g. a Grad-CAM map that its ReLU zeroed."""
    def ranks(x):
        return jax.vmap(lambda row: jax.scipy.stats.rankdata(row, method="average"))(x.reshape(len(x), -1))

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    norm = jnp.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    return jnp.where(norm > 0, (ra * rb).sum(axis=1) / jnp.where(norm > 0, norm, 1), jnp.nan)


def ssim(a: Array, b: Array, data_range: float = 1.0) -> Array:
    """The mean structural similarity of each pair of (N, H, W) maps, (N,), over the positions where a 7x7 window
    fits (scikit-image's ``structural_similarity`` with its defaults)."""
    if a.ndim != 3 or min(a.shape[1:]) < _SSIM_WINDOW:
        raise ValueError(f"ssim compares (N, H, W) maps of at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, got {a.shape}")
    count = _SSIM_WINDOW ** 2

    def mean(x):
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, _SSIM_WINDOW, _SSIM_WINDOW), (1, 1, 1), "VALID") / count

    ua, ub = mean(a), mean(b)
    unbiased = count / (count - 1)
    va, vb = unbiased * (mean(a * a) - ua * ua), unbiased * (mean(b * b) - ub * ub)
    cov = unbiased * (mean(a * b) - ua * ub)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    score = (2 * ua * ub + c1) * (2 * cov + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return score.mean(axis=(1, 2))


def _unit_heat(maps: Array) -> Array:
    heat = jnp.abs(maps)
    top = heat.max(axis=(1, 2), keepdims=True)
    return heat / jnp.where(top > 0, top, 1)


@jax.jit
def similarity(reference: Array, other: Array) -> dict:
    """``{metric: (N,)}`` between two methods' maps of the same images, for each of ``METRICS``."""
    a, b = _flat_maps(reference), _flat_maps(other)
    return {"spearman": spearman(a, b),
            "spearman_abs": spearman(_flat_abs(reference), _flat_abs(other)),
            "ssim": ssim(_unit_heat(_flat_abs(reference)), _unit_heat(_flat_abs(other)))}


def _flat_abs(maps: Array) -> Array:
    """Absolute maps summed over channels (the heat map the plots draw)."""
    maps = jnp.abs(jnp.asarray(maps, jnp.float32))
    return maps.sum(axis=-1) if maps.ndim == 4 else maps


# --- which layers, and their randomization ---------------------------------------------------------------------

def parameter_layers(model: nn.Module, images: Array) -> list:
    """The model's top-level parameter groups (e.g. "stem", "stage2_block0", "head"), input side first: the
    default units of randomization. The order is Flax's creation order, the forward order of a compact model, read
    from an initialization traced on one image (not run): variables read from a file, or returned through a JAX
    transform, have their keys sorted by name instead, and "stem" sorts after "stage3"."""
    layers = []
    jax.eval_shape(lambda x: layers.extend(model.init(jax.random.key(0), x)["params"]), images[:1])
    return layers


def _matching(variables: Mapping, layer: str) -> list:
    """The parameter paths (tuples) at or under ``layer`` ("conv1", "stage2_block0/conv1")."""
    prefix = tuple(part for part in layer.split("/") if part)
    return [path for path in traverse_util.flatten_dict(variables["params"]) if path[:len(prefix)] == prefix]


def check_order(variables: Mapping, order: Sequence[str]) -> tuple:
    """``order`` as a tuple; raises for an empty order or a name that matches no parameter, listing the layers."""
    order = tuple(order)
    missing = [layer for layer in order if not _matching(variables, layer)]
    if not order or missing:
        problem = f"{missing[0]!r} names no layer" if missing else "empty"
        raise ValueError(f"randomization order {list(order)}: {problem}; the model's layers are "
                         f"{list(variables['params'])} (or a path below one, "
                         "e.g. 'head/logits')")
    return order


def randomized(variables: Mapping, fresh: Mapping, layers: Sequence[str]) -> dict:
    """``variables`` with the parameters of ``layers`` taken from ``fresh`` (a ``model.init`` of the same model)."""
    params = traverse_util.flatten_dict(variables["params"])
    new = traverse_util.flatten_dict(fresh["params"])
    for layer in layers:
        for path in _matching(variables, layer):
            params[path] = new[path]
    return {**variables, "params": traverse_util.unflatten_dict(params)}


# --- the checks -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SanityResult:
    """``order``: the layers randomized, top first. ``cascading[method][metric]`` and ``independent[...]``:
    (len(order) + 1, N), row 0 the trained model against itself, row k after randomizing ``order[:k]`` (cascading)
    or ``order[k - 1]`` alone (independent). ``data[method][metric]``: (N,), the shuffled-label model against the
    trained one (None without one). ``maps[method]``: (len(order) + 1, H, W) absolute maps of image 0 along the
    cascade, for the figure."""
    order: tuple
    methods: tuple
    cascading: dict
    independent: dict
    data: dict | None
    maps: dict


def sanity_checks(model: nn.Module, variables: Mapping, images: Array, targets: Array, rng: jax.Array, *,
                  methods: Sequence[str] = ("gradient", "gradient_x_input", "guided_backprop",
                                            "integrated_gradients", "smoothgrad", "grad_cam"),
                  order: Sequence[str] | None = None, shuffled_variables: Mapping | None = None,
                  independent: bool = True, settings: Settings | None = None) -> SanityResult:
    """Model-parameter randomization (cascading and, with ``independent``, one layer at a time) and, given
    ``shuffled_variables`` (the same model trained on shuffled labels), data randomization, for every method.

    ``order``: the layers to randomize, top first (default: every top-level parameter group, output side first).
    ``targets``: the class each map explains, the same for every model (e.g. the trained model's predictions).
    ``rng`` draws the fresh weights and SmoothGrad's noise."""
    targets = check_inputs(images, targets, "sanity_checks")
    check_targets(targets, jax.eval_shape(model.apply, variables, images[:1]).shape[-1])
    methods = check_methods(methods)
    order = check_order(variables, order if order is not None else parameter_layers(model, images)[::-1])
    init_key, noise_key = jax.random.split(rng)
    fresh = jax.jit(model.init)(init_key, images[:1])
    explainers = {name: attribution(name, model, settings) for name in methods}

    def maps_of(v):
        return {name: explain(v, images, targets, noise_key) for name, explain in explainers.items()}

    trained = maps_of(variables)
    first_maps = {name: [] for name in methods}  # image 0's maps along the cascade, for the figure

    def compare(models, keep_maps=False):
        rows = {name: {metric: [] for metric in METRICS} for name in methods}
        for v in models:
            for name, maps in maps_of(v).items():
                if keep_maps:
                    first_maps[name].append(np.asarray(_flat_abs(maps[:1]))[0])
                for metric, values in similarity(trained[name], maps).items():
                    rows[name][metric].append(np.asarray(values))
        return {name: {metric: np.stack(values) for metric, values in row.items()} for name, row in rows.items()}

    cascading = compare((randomized(variables, fresh, order[:k]) for k in range(len(order) + 1)), keep_maps=True)
    one_at_a_time = None
    if independent:
        one_at_a_time = compare([variables] + [randomized(variables, fresh, [layer]) for layer in order])
    data = None
    if shuffled_variables is not None:
        data = {name: {metric: values[0] for metric, values in row.items()}
                for name, row in compare([shuffled_variables]).items()}
    return SanityResult(order, methods, cascading, one_at_a_time, data,
                        {name: np.stack(maps) for name, maps in first_maps.items()})


def summary(result: SanityResult) -> dict:
    """The result as JSON-ready numbers: each test's metric averaged over the images where it is defined (a list
    along the order; null where it is defined for none)."""
    def mean(values):
        with warnings.catch_warnings():  # an all-NaN row (no image defines the metric) gives null, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(np.asarray(values, np.float64), axis=-1)
        return np.where(np.isnan(means), None, means).tolist()

    def table_means(table):
        return None if table is None else {
            name: {metric: mean(values) for metric, values in row.items()} for name, row in table.items()}

    return {"order": list(result.order), "methods": list(result.methods),
            "cascading": table_means(result.cascading), "independent": table_means(result.independent),
            "data_randomization": table_means(result.data)}
