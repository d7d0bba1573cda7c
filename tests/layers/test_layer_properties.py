"""Every layer of ``cnn_jax.layers``, in evaluation and training: jit == eager, vmap over an extra leading axis ==
a loop, and bfloat16 against the float32 layer with the same variables.

jit and vmap (float32): the same arithmetic, but XLA may fuse or vectorize a sum in another order; a layer's sums
have at most K = kh * kw * C_in terms, moved by about sqrt(K) * 2^-24 of their magnitude each, so ``REORDERED``
(1e-5 relative to the output's scale) holds for the K <= 72 here with a margin of 20 at least.

bfloat16 against float32: the bfloat16 layer rounds to 8 significant bits (unit roundoff u = 2^-8) its input, each
weight it casts, and each output it stores (a convolution's, BatchNorm's, a residual sum's); oneDNN and XLA
multiply bfloat16 values exactly and sum in float32, so the sums add nothing. A rounding of the values entering a
K-term sum of random signs moves the sum by about u times the sum's scale (the errors add as a random walk, like
the terms), not sqrt(K) times, and the layers here keep the scale (He-scaled kernels, BatchNorm), so R roundings
on the longest path give at most about R * u relative to the output's scale. ``roundings`` counts R per layer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import varied_variables

from cnn_jax import layers

REORDERED = 1e-5
BFLOAT16_U = 2.0 ** -8
KEY = jax.random.key(0)

# name: (module, input channels, R: bfloat16 roundings on its longest path, counting its input's)
LAYERS = {
    "conv": (layers.Conv(6, 3), 4, 3),  # input, kernel, output
    "conv-grouped-strided": (layers.Conv(6, 3, 2, groups=2), 4, 3),
    "conv-depthwise-circular": (layers.Conv(4, 3, padding="CIRCULAR", groups=4), 4, 3),
    "conv-bn": (layers.ConvBN(6, 3), 4, 4),  # input, kernel, conv, BatchNorm (ReLU is exact)
    "conv-bn-depthwise-relu6": (layers.ConvBN(8, 3, 2, groups=8, activation=jax.nn.relu6), 8, 4),
    "batch-norm": (layers.BatchNorm(), 4, 2),
    "residual-identity": (layers.ResidualBlock(4), 4, 8),  # + second ConvBN (3) and the residual sum
    "residual-projection": (layers.ResidualBlock(8, 2), 4, 8),
    "residual-pad": (layers.ResidualBlock(8, 2, shortcut="pad"), 4, 8),
    "bottleneck": (layers.Bottleneck(2, 2), 4, 11),  # three ConvBNs and the sum
    "inverted-residual-se": (layers.InvertedResidual(4, se_ratio=0.5), 4, 16),  # + the SE gate's five
    "squeeze-excite": (layers.SqueezeExcite(2), 4, 7),  # input, mean, two convs, sigmoid, product
    "normalize": (layers.Normalize((0.5,) * 4, (0.25,) * 4), 4, 1),
    "dropout": (layers.Dropout(0.5, broadcast_dims=(1, 2)), 4, 2),  # input, the scaled kept values
}
TRAINS = ("conv-bn", "conv-bn-depthwise-relu6", "batch-norm", "residual-projection", "bottleneck",
          "inverted-residual-se", "dropout")


def takes_train(module) -> bool:
    return isinstance(module, (layers.ConvBN, layers.BatchNorm, layers.ResidualBlock, layers.Bottleneck,
                               layers.InvertedResidual))


def mode_kwargs(module, train: bool) -> dict:
    """The call's keyword for evaluation or training, as each layer names it."""
    if isinstance(module, layers.Dropout):
        return dict(deterministic=not train)
    if isinstance(module, layers.BatchNorm):
        return dict(use_running_average=not train)
    return dict(train=train) if takes_train(module) else {}


def variables_of(module, x):
    return varied_variables(module, x, **mode_kwargs(module, train=False))


def apply_fn(module, variables, train):
    """``x -> output`` (training also returns the updated batch statistics); dropout draws from a fixed key."""
    kwargs = mode_kwargs(module, train)
    if isinstance(module, layers.Dropout):
        kwargs["rngs"] = {"dropout": KEY}
    elif train:
        kwargs["mutable"] = ["batch_stats"]
    return lambda x: module.apply(variables, x, **kwargs)


def images(name, batch=2, seed=1):
    channels = LAYERS[name][1]
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, 6, 6, channels)), jnp.float32)


def assert_close(actual, expected, relative):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape
        scale = max(np.abs(e).max(), 1e-6)
        assert np.abs(a - e).max() <= relative * scale, f"{np.abs(a - e).max() / scale:.3g} > {relative:.3g}"


CASES = [pytest.param(name, False, id=f"{name}-eval") for name in LAYERS] + [
    pytest.param(name, True, id=f"{name}-train") for name in TRAINS]


@pytest.mark.parametrize("name, train", CASES)
def test_jit_equals_eager_and_vmap_equals_a_loop(name, train):
    """vmap over a leading axis of two batches: in training each batch normalizes by its own statistics."""
    module = LAYERS[name][0]
    x = images(name)
    f = apply_fn(module, variables_of(module, x), train)
    eager = f(x)
    assert_close(jax.jit(f)(x), eager, REORDERED)
    stacked = jnp.stack([x, x[::-1] * 2 - 0.5])
    looped = jax.tree.map(lambda *rows: jnp.stack(rows), *[jax.jit(f)(batch) for batch in stacked])
    assert_close(jax.jit(jax.vmap(f))(stacked), looped, REORDERED)


@pytest.mark.parametrize("name, train", CASES)
def test_bfloat16_is_float32_within_its_roundings(name, train):
    module, _, roundings = LAYERS[name]
    x = images(name, batch=4)
    variables = variables_of(module, x)
    half = module.clone(dtype=jnp.bfloat16) if hasattr(module, "dtype") else module
    want = jax.jit(apply_fn(module, variables, train))(x)
    got = jax.jit(apply_fn(half, variables, train))(x.astype(jnp.bfloat16))
    output = got[0] if train and takes_train(module) else got
    if isinstance(module, layers.Normalize):
        assert output.dtype == jnp.float32  # Normalize computes in float32 whatever its input
    else:
        assert output.dtype == jnp.bfloat16
    assert_close(got, want, roundings * BFLOAT16_U)
