"""Faithfulness of attribution maps: deletion and insertion curves and their areas (Petsiuk et al., "RISE:
Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018).

A map ranks the pixels. **Deletion** replaces them, most important first, with black and follows the model's
probability of the explained class: if the map found what drives the class, the probability falls fast, and the
area under the curve (AUC) is low. **Insertion** starts from a blurred copy of the image and puts the pixels back in
the same order: the probability should rise fast (a high AUC). Each method is scored beside two baselines that
know nothing of the model: a random ranking (``"random"``), and the image's edges, the Sobel gradient magnitude of
its channel mean (``"edges"``). A method no better than the edges ranks the image's structure, not the model's
evidence.

How a map ranks pixels: maps of contributions (gradient x input, the integrated-gradient methods, occlusion,
Grad-CAM) by their value summed over channels, so evidence against the class comes last; maps of sensitivity
(``SENSITIVITY``: the gradient, SmoothGrad of it, guided backpropagation), whose sign is a direction rather than
a contribution, by their magnitude, as their plots show them. Ties (a background of zeros) are broken at random.

``curves`` scores given maps of any logits function; ``faithfulness`` runs every method by name
(``methods.METHODS``) and both baselines on a model, ``chunk`` images at a time, each chunk one jitted call per
method (the attribution and both curves).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.interpret.blur_ig import blur, blur_matrices
from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, check_targets, map_over, selected_logits
from cnn_jax.interpret.methods import METHODS, Settings, attribution, check_methods

BASELINES = ("random", "edges")
SENSITIVITY = ("gradient", "smoothgrad", "guided_backprop")  # ranked by magnitude; the other methods by value


class Curves(NamedTuple):
    """The target's probability after each step, (N, steps + 1): ``deletion`` from the image to black,
    ``insertion`` from the blurred image to the image; column k after k / steps of the pixels moved."""
    deletion: Array
    insertion: Array


def area(curve: Array) -> Array:
    """The area under each curve (N, steps + 1) -> (N,), trapezoids over the fraction of pixels moved, 0 to 1."""
    curve = jnp.asarray(curve)
    return (curve[:, :-1] + curve[:, 1:]).sum(axis=1) / (2 * (curve.shape[1] - 1))


def pixel_scores(maps: Array, signed: bool) -> Array:
    """Maps (N, H, W, C) or (N, H, W) as one score per pixel (N, H, W): summed over channels, or their magnitudes
    summed when not ``signed``."""
    maps = jnp.asarray(maps, jnp.float32)
    maps = maps if signed else jnp.abs(maps)
    return maps.sum(axis=-1) if maps.ndim == 4 else maps


def edges(images: Array) -> Array:
    """The Sobel gradient magnitude of each image's channel mean, (N, H, W) (``scipy.ndimage.sobel`` along both
    axes with ``mode="nearest"``, combined by ``hypot``)."""
    gray = jnp.pad(jnp.asarray(images, jnp.float32).mean(axis=-1), ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = gray.shape[1] - 2, gray.shape[2] - 2

    def shifted(dy, dx):
        return gray[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    smoothing = ((-1, 1.0), (0, 2.0), (1, 1.0))  # (offset across the derivative, weight)
    along_rows = sum(w * (shifted(1, o) - shifted(-1, o)) for o, w in smoothing)
    along_cols = sum(w * (shifted(o, 1) - shifted(o, -1)) for o, w in smoothing)
    return jnp.hypot(along_rows, along_cols)


def _ranks(scores: Array, rng: jax.Array) -> Array:
    """Each pixel's place in its image's order, most important first (0), ties in random order: (N, H * W)."""
    flat = scores.reshape(len(scores), -1)
    tiebreak = jax.random.uniform(rng, flat.shape)
    order = jax.vmap(lambda s, t: jnp.lexsort((t, -s)))(flat, tiebreak)
    return jnp.argsort(order, axis=1)


def curves(f: LogitsFn, images: Array, targets: Array, scores: Array, rng: jax.Array, *, steps: int = 32,
           blur_sigma: float = 5.0, batch_size: Optional[int] = None) -> Curves:
    """Deletion and insertion curves of ``f``'s probability of each image's target class as the pixels go in the
    order of ``scores`` (N, H, W), highest first (e.g. ``pixel_scores`` of a method's maps). Deleted pixels turn
    black (0) on every channel; insertion starts from the image blurred by a Gaussian of width ``blur_sigma`` pixels
    (zero-padded, as Blur IG's). ``rng`` breaks ties. ``batch_size`` steps run at a time (None: all of them)."""
    targets = check_inputs(images, targets, "faithfulness")
    scores = jnp.asarray(scores, jnp.float32)
    if scores.shape != images.shape[:3]:
        raise ValueError(f"faithfulness needs one score per pixel, (N, H, W) = {images.shape[:3]}; got scores of "
                         f"shape {scores.shape} (pixel_scores turns maps into scores)")
    if steps < 1 or blur_sigma <= 0:
        raise ValueError(f"faithfulness needs steps >= 1 and blur_sigma > 0, got steps={steps}, "
                         f"blur_sigma={blur_sigma}")
    count, height, width, _ = images.shape
    ranks = _ranks(scores, rng).reshape(count, height, width, 1)
    canvas = blur(images, jnp.asarray(blur_matrices(height, [blur_sigma])[0]),
                  jnp.asarray(blur_matrices(width, [blur_sigma])[0]))
    moved = jnp.asarray(np.round(np.arange(steps + 1) * (height * width) / steps), jnp.int32)

    def probability(x):
        return jnp.exp(selected_logits(jax.nn.log_softmax(f(x).astype(jnp.float32)), targets))

    def at(moved_pixels):
        first = ranks < moved_pixels
        return probability(jnp.where(first, 0.0, images)), probability(jnp.where(first, images, canvas))

    deletion, insertion = map_over(at, moved, batch_size)  # each (steps + 1, N)
    return Curves(deletion.T, insertion.T)


# --- every method on a model -------------------------------------------------------------------------------------

@dataclasses.dataclass
class FaithfulnessResult:
    """``names``: the methods, then the baselines. ``deletion[name]``, ``insertion[name]``: (N, steps + 1) curves
    (numpy). ``seconds[name]``: the wall time of its maps and curves over all the images, compilation included."""
    names: tuple
    deletion: dict
    insertion: dict
    seconds: dict


def _chunks(count: int, chunk: int):
    """(start, stop) of each run of ``chunk`` images; the last may be short."""
    return [(start, min(start + chunk, count)) for start in range(0, count, chunk)]


def _padded(x, size: int):
    """``x`` with its last row repeated up to ``size`` rows: every chunk has one shape, so one compilation."""
    return x if len(x) == size else jnp.concatenate([x, jnp.repeat(x[-1:], size - len(x), axis=0)])


def faithfulness(model: nn.Module, variables: Mapping, images: Array, targets: Array, rng: jax.Array, *,
                 methods: Sequence[str] = METHODS, baselines: Sequence[str] = BASELINES,
                 settings: Settings | None = None, steps: int = 32, blur_sigma: float = 5.0,
                 chunk: int = 100) -> FaithfulnessResult:
    """Deletion and insertion curves of every method in ``methods`` (see ``methods.METHODS``) and every baseline
    in ``baselines`` (``BASELINES``) on ``model`` in inference mode, explaining ``targets`` (e.g. the model's
    predictions). ``rng`` draws SmoothGrad's noise, the random baseline and the ties' order."""
    images = jnp.asarray(images, jnp.float32)
    targets = check_inputs(images, targets, "faithfulness")
    check_targets(targets, jax.eval_shape(model.apply, variables, images[:1]).shape[-1])
    methods = check_methods(methods) if methods else ()
    baselines = (baselines,) if isinstance(baselines, str) else tuple(baselines)
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown faithfulness baseline {unknown[0]!r}: use any of {', '.join(BASELINES)}")
    if not methods + baselines:
        raise ValueError("faithfulness needs at least one method or baseline to score")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of images, got {chunk}")
    chunk = min(chunk, len(images))
    score = functools.partial(curves, steps=steps, blur_sigma=blur_sigma)

    def scorer(name):
        if name == "random":
            return lambda v, x, t, key: jax.random.uniform(jax.random.fold_in(key, 1), x.shape[:3])
        if name == "edges":
            return lambda v, x, t, key: edges(x)
        explain = attribution(name, model, settings)
        return lambda v, x, t, key: pixel_scores(explain(v, x, t, key), signed=name not in SENSITIVITY)

    def runner(name):
        scores_of = scorer(name)

        @jax.jit
        def run(variables, x, t, key):
            method_key, ties_key = jax.random.split(key)
            return score(functools.partial(model.apply, variables), x, t, scores_of(variables, x, t, method_key),
                         ties_key)
        return run

    result = FaithfulnessResult(methods + baselines, {}, {}, {})
    runs = [runner(name) for name in result.names]
    for run in runs:  # traced, not run: a method that does not apply to the model fails before any is scored
        jax.eval_shape(run, variables, _padded(images[:chunk], chunk), _padded(targets[:chunk], chunk), rng)
    for index, (name, run) in enumerate(zip(result.names, runs)):
        start, parts = time.perf_counter(), []
        for number, (lo, hi) in enumerate(_chunks(len(images), chunk)):
            key = jax.random.fold_in(jax.random.fold_in(rng, index), number)
            parts.append(jax.tree.map(lambda c, n=hi - lo: np.asarray(c)[:n],
                                      run(variables, _padded(images[lo:hi], chunk), _padded(targets[lo:hi], chunk),
                                          key)))
        result.seconds[name] = time.perf_counter() - start
        result.deletion[name] = np.concatenate([part.deletion for part in parts])
        result.insertion[name] = np.concatenate([part.insertion for part in parts])
    return result


def summary(result: FaithfulnessResult) -> dict:
    """JSON-ready numbers: per name, the mean deletion and insertion AUC over the images with their standard
    errors, the mean curves, and the seconds it took."""
    def stats(curve):
        areas = np.asarray(area(jnp.asarray(curve)), np.float64)
        return float(areas.mean()), float(areas.std(ddof=1) / np.sqrt(len(areas))) if len(areas) > 1 else None

    table = {}
    for name in result.names:
        (deletion, deletion_sem), (insertion, insertion_sem) = (stats(result.deletion[name]),
                                                                stats(result.insertion[name]))
        table[name] = {"deletion_auc": deletion, "deletion_auc_sem": deletion_sem, "insertion_auc": insertion,
                       "insertion_auc_sem": insertion_sem, "seconds": result.seconds[name],
                       "deletion_curve": np.asarray(result.deletion[name]).mean(axis=0).tolist(),
                       "insertion_curve": np.asarray(result.insertion[name]).mean(axis=0).tolist()}
    images = len(next(iter(result.deletion.values())))
    return {"images": images, "names": list(result.names), "baselines": [n for n in result.names if n in BASELINES],
            "methods": table}
