"""Dataset examples (Olah et al. 2017, "Feature Visualization", Distill): the natural images that excite a unit
most, shown beside the image optimized for it, so a reader can tell what of the optimized image the unit responds
to in real data.

Images are ranked by exactly the value ``activation_maximization`` raises (``unit_values``: a channel's spatial
mean, a neuron, a class logit), in one pass over the data: a jitted step merges each batch into the running top
``k`` of every unit, keeping the images themselves, so a split or folder of any size streams through.
"""
from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.interpret.activation_maximization import Objective, check_indices, check_kind, logits_and_layer, units_from


class Examples(NamedTuple):
    """For each objective index, the ``k`` best images, best first: their ``values`` (units, k), their
    ``positions`` in the stream (units, k; -1 where fewer than k images were seen) and the ``images`` themselves
    (units, k, H, W, C)."""
    values: np.ndarray
    positions: np.ndarray
    images: np.ndarray


def _all_units(model: nn.Module, variables: Mapping, objectives: Sequence[Objective], images) -> list:
    """``unit_values`` of every objective, (N, units) each, from one forward pass per layer named (class
    objectives read the logits of any of them)."""
    layers = list(dict.fromkeys(o.layer for o in objectives if o.kind != "logit")) or [None]
    outputs = {layer: logits_and_layer(model, variables, layer, images) for layer in layers}
    logits = outputs[layers[0]][0]
    return [units_from(o, logits, None if o.kind == "logit" else outputs[o.layer][1]) for o in objectives]


def top_examples(model: nn.Module, variables: Mapping, objectives: Sequence[Objective], batches: Iterable[Mapping],
                 k: int = 4) -> tuple:
    """One ``Examples`` per objective: the ``k`` images of ``batches`` that score highest on each of its indices.

    ``batches`` as ``cnn_jax.data``'s ``Dataset.eval_batches(split)`` yields them, for a tfds split or an image
    folder alike: dicts with ``"image"`` (n, H, W, C) in [0, 1] and optionally ``"mask"`` (n,), 0 for padding rows
    (which never count). Batches of one shape share one compilation; each is read once for all the objectives.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (images per unit), got {k}")
    objectives = tuple(objectives)
    if not objectives:
        raise ValueError("top_examples needs at least one objective (channel(), neuron() or class_logit())")
    for objective in objectives:
        check_kind(objective)

    def merge_one(objective, best, scores, images, mask, offset):
        values, positions, kept = best
        check_indices(objective, scores.shape[-1])
        scores = jnp.where(mask[None, :] > 0, scores[:, jnp.asarray(objective.indices)].T, -jnp.inf)  # (units, n)
        new_positions = jnp.broadcast_to(offset + jnp.arange(len(images)), scores.shape)
        values, where = jax.lax.top_k(jnp.concatenate([values, scores], axis=1), k)  # < k: kept, else a batch row
        positions = jnp.take_along_axis(jnp.concatenate([positions, new_positions], axis=1), where, axis=1)
        earlier = kept[jnp.arange(len(kept))[:, None], jnp.minimum(where, k - 1)]
        kept = jnp.where((where < k)[..., None, None, None], earlier, images[jnp.maximum(where - k, 0)])
        return values, positions, kept

    @jax.jit
    def merge(best, images, mask, offset):
        scores = _all_units(model, variables, objectives, images)
        return tuple(merge_one(o, b, s, images, mask, offset) for o, b, s in zip(objectives, best, scores, strict=True))

    best, offset = None, 0
    for batch in batches:
        images = jnp.asarray(batch["image"], jnp.float32)
        if images.ndim != 4:
            raise ValueError(f"dataset examples need batches of (n, H, W, C) images, got shape {images.shape}")
        mask = jnp.asarray(batch.get("mask", np.ones(len(images), np.float32)))
        if best is None:
            best = tuple((jnp.full((len(o.indices), k), -jnp.inf, jnp.float32),
                          jnp.full((len(o.indices), k), -1, jnp.int32),
                          jnp.zeros((len(o.indices), k, *images.shape[1:]), jnp.float32)) for o in objectives)
        best = merge(best, images, mask, offset)
        offset += len(images)
    if best is None:
        raise ValueError("dataset examples need at least one batch of images; the source was empty")
    found = []
    for values, positions, images in best:
        values = np.asarray(values)
        found.append(Examples(values, np.where(np.isfinite(values), np.asarray(positions), -1), np.asarray(images)))
    return tuple(found)
