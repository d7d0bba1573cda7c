"""``--half_precision``'s train step, fast enough for the default suite: a zoo model built with bfloat16 compute
(as ``cnn_jax.run.experiment.train_model`` builds it), trained by the engine's own state and step.

It keeps params, optimizer state and the loss in float32, computes its convolutions, BatchNorms and logits' layers
in bfloat16, takes the float32 step's gradient within its roundings, and trains.

Tolerances (relative, u = 2^-8 the unit roundoff of bfloat16's 8 significant bits). The forward pass rounds
R = 8 values to bfloat16 on its longest path (the input, the conv kernel, its output, BatchNorm's output, dropout's
scaled values, the dense kernel and its output; the max pool rounds nothing), the backward pass about as many again
(each cotangent a layer stores). Each rounding moves a sum by about u of its scale (errors of random sign add as
the terms do), so the loss is within R u and a gradient within 2 R u of float32's, in norm. Except the conv
kernel's, which BatchNorm's backward pass makes a cancelling sum: it subtracts the per-channel means of the
cotangent and of its product with the normalized output, so the kernel gradient's T = N * H * W terms (512 here)
sum to about 1/sqrt(T) of their magnitude, and the cotangent's rounding (u of each term) shows at u sqrt(T) of the
result; twice that for the random walk's tail, plus the 2 R u above. (Measured on the 2-core VM: 0.5% for every
other gradient, 12% for the conv kernel's, the same in kernel mode "portable".)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.models import get_model
from cnn_jax.models.small_cnns import VGGStage
from cnn_jax.train import TrainConfig, create_train_state, make_optimizer, make_train_step

ROUNDINGS = 8
U = 2.0 ** -8
# cnn3's design (conv-BN-ReLU, max pool, dropout, dense head) at one narrow stage: its step compiles in seconds.
TINY = dict(stages=(VGGStage(8, 1, 0.2),), hidden=())


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(size=(n, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32)}


@functools.lru_cache(maxsize=None)
def state_and_step(dtype):
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=0.1, schedule="constant")
    model = get_model("cnn3", 10, dtype=dtype, **TINY)
    state = create_train_state(model, make_optimizer(config, 10), (8, 8, 3), seed=0)
    return state, jax.jit(make_train_step())


def test_half_precision_step_keeps_float32_state_and_takes_the_float32_gradient():
    half, step = state_and_step(jnp.bfloat16)
    full, full_step = state_and_step(jnp.float32)
    images = batch()
    logits = half.apply_fn(half.variables, images["image"], train=False)
    assert logits.dtype == jnp.float32
    convolutions = str(jax.make_jaxpr(lambda x: half.apply_fn(half.variables, x, train=False))(images["image"]))
    assert "bf16[8,8,8,8]" in convolutions  # the first stage's map is computed in bfloat16

    new_half, metrics = step(half, images)
    new_full, full_metrics = full_step(full, images)
    leaves = jax.tree.leaves((new_half.params, new_half.opt_state, new_half.batch_stats))
    floating = {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floating == {jnp.dtype(jnp.float32)}  # (the optimizer's step count is int32)
    assert metrics["loss"].dtype == jnp.float32 and bool(metrics["finite"])
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=ROUNDINGS * U)
    # Plain SGD: the update is -learning_rate * gradient, so the parameter change compares the gradients.
    terms = images["image"].shape[0] * 8 * 8  # a kernel-gradient element sums over N * H * W
    for (path, new), old, new_f32, old_f32 in zip(jax.tree_util.tree_flatten_with_path(new_half.params)[0],
                                                  jax.tree.leaves(half.params), jax.tree.leaves(new_full.params),
                                                  jax.tree.leaves(full.params), strict=True):
        got, want = np.ravel(new - old), np.ravel(new_f32 - old_f32)
        behind_batch_norm = jax.tree_util.keystr(path) == "['stage1_conv0']['conv']['kernel']"
        bound = 2 * ROUNDINGS * U + (2 * np.sqrt(terms) * U if behind_batch_norm else 0)
        assert np.linalg.norm(got - want) <= bound * np.linalg.norm(want), jax.tree_util.keystr(path)


def test_half_precision_trains():
    state, step = state_and_step(jnp.bfloat16)
    images = batch(1)
    losses = []
    for _ in range(8):
        state, metrics = step(state, images)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
