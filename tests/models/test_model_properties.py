"""Batch properties of every zoo model in evaluation, at every kernel switch: one example's logits depend on that
example alone.

For each model (small images, random variables with non-trivial BatchNorm statistics), on the engine's path
(``fused_apply``, kernel mode "fast") and on ``model.apply`` in modes "fast", "separate" and "portable", in float32
and bfloat16:

- permutation equivariance: ``f(x[p]) == f(x)[p]``;
- batch-size independence: each row of a batch of 3 equals the same example alone (batch 1), which puts the
  batch on both sides of the one size-dependent kernel choice (``ops.fast.ONE_CHANNEL_MAP_BYTES``: simple_cnn's
  first convolution, shifted multiply-adds from batch 2 at 28x28; ``test_simple_cnn_batches_straddle_...``
  checks that the batches tested do take both kernels);
- padding: replacing an example by a padding example (zeros, as the engine pads its last batch, or NaN) leaves the
  others' logits unchanged;
- jit == eager and vmap: the jitted model equals the model applied op by op, and ``vmap`` over single examples
  equals the rows of the batched call;
- circular padding: every model that takes ``padding_mode`` commutes with circular shifts by multiples of its
  total stride (its feature map moves, its logits stay where its head pools globally).

Kept fast: in the default suite each model takes one (path, dtype) of the eight by rotation, so that all eight are
covered across the zoo; the whole cross product, the ImageNet models' eager runs and the circular shifts of the
deeper members of each family are marked slow.

Tolerance, relative to the largest logit magnitude. The runs compared compute each example with the same
arithmetic, except that kernels chosen for another batch size may take a layer's sums in another order. Reordering
a sum of K float32 products moves it by about sqrt(K) * 2^-24 of the products' magnitude (rounding errors adding
as a random walk). In bfloat16 each layer rounds its outputs to 8 significant bits, so where two runs' float32 sums
differ at all a value can round to the neighbouring bfloat16: about 2^-8 of the scale. With He-scaled layers
(gain ~1) a layer's difference reaches the logits neither damped nor amplified, and the differences of L layers,
of random sign, add as a random walk: sqrt(L) * sqrt(K_max) * 2^-24 in float32, sqrt(L) * 2^-8 in bfloat16, times
``SAFETY`` = 4 for the walk's tail. Measured on the 2-core VM (2026-12-07): batch 1 against batch 3 differs by at
most 6e-7 of the scale in float32 (resnet20, simple_cnn: under 1/40 of the bound) and not at all in bfloat16;
permutations are bit-exact. A leak between examples (a batch statistic, a mixed row) moves the logits by O(1).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import examples, varied_variables
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import ops
from cnn_jax.fused import fused_apply
from cnn_jax.models import get_model, list_models, model_spec
from cnn_jax.ops import fast

# Each model at a small size it accepts, with the kwargs that keep it small where its builder allows.
SMALL = {
    "mlp": (8, {}), "simple_cnn": (28, {}), "lenet5": (8, {}), "cnn3": (8, {}), "vgg_mini": (8, {}),
    "alexnet_mini": (8, {}), "airbench": (8, {}), "airbench_half": (8, {}),
    **{f"resnet{depth}": (8, {}) for depth in (20, 32, 44, 56)},
    **{f"resnet{depth}": (32, {}) for depth in (18, 34, 50)},
    "mobilenet_v2": (32, {"width_multiplier": 0.25}),
    **{f"efficientnet_lite{i}": (32, {"width_coefficient": 0.25}) for i in range(3)},
}
# (path, kernel mode): the engine's fused evaluation, and the model as written in each mode.
PATHS = (("fused", "fast"), ("apply", "fast"), ("apply", "separate"), ("apply", "portable"))
DTYPES = (jnp.float32, jnp.bfloat16)
CONFIGS = [(path, mode, dtype) for dtype in DTYPES for path, mode in PATHS]
SAFETY = 4
BATCH = 3


def test_every_zoo_model_is_covered():
    assert set(SMALL) == set(list_models())


def relative_tolerance(variables, dtype) -> float:
    """``SAFETY * sqrt(L) * sqrt(K_max) * 2^-24`` in float32, ``SAFETY * sqrt(L) * 2^-8`` in bfloat16 (module
    docstring), L and K_max counted from the model's kernels."""
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
               if path[-1].key == "kernel"]
    layers, fan_in = len(kernels), max(math.prod(shape[:-1]) for shape in kernels)
    per_layer = 2.0 ** -8 if dtype == jnp.bfloat16 else math.sqrt(fan_in) * 2.0 ** -24
    return SAFETY * math.sqrt(layers) * per_layer


def assert_close(actual, expected, tolerance, scale):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    error = np.abs(actual - expected).max()
    assert error <= tolerance * scale, f"{error / scale:.3g} of the logits' scale, allowed {tolerance:.3g}"


@functools.lru_cache(maxsize=None)
def setup(name, dtype):
    size, kwargs = SMALL[name]
    model = get_model(name, 10, dtype=dtype, **kwargs)
    channels = model_spec(name).input_shape[-1]
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(BATCH, size, size, channels)), jnp.float32)
    return model, images, varied_variables(model, images, train=False)


def evaluation(model, path):
    apply = fused_apply(model) if path == "fused" else model.apply
    return lambda variables, x: apply(variables, x, train=False)


# Deeper twins of models in the default suite (the same code with more blocks): all their configs run in the slow
# set, each compiling for 10-25 s on the 2-core VM.
TWINS = {"resnet34", "efficientnet_lite1", "efficientnet_lite2"}

# simple_cnn holds the one size-dependent kernel choice, taken in float32 and mode "fast" only: its default config.
PINNED = {"simple_cnn": ("fused", "fast", jnp.float32)}


def config_params():
    """Every (model, config); in the default suite one config per model (twins aside) by rotation, so that every
    config runs on several models; the rest marked slow."""
    params, rotated = [], [name for name in list_models() if name not in TWINS and name not in PINNED]
    for name in list_models():
        for number, config in enumerate(CONFIGS):
            if name in PINNED:
                chosen = config == PINNED[name]
            else:
                chosen = name in rotated and number == rotated.index(name) % len(CONFIGS)
            marks = () if chosen else (pytest.mark.slow,)
            ids = f"{name}-{config[0]}-{config[1]}-{jnp.dtype(config[2]).name}"
            params.append(pytest.param(name, *config, marks=marks, id=ids))
    return params


@pytest.mark.parametrize("name, path, mode, dtype", config_params())
def test_logits_depend_on_their_own_example_only(name, path, mode, dtype):
    model, x, variables = setup(name, dtype)
    f = evaluation(model, path)
    with ops.kernels(mode):
        jitted = jax.jit(f)
        logits = np.asarray(jitted(variables, x))
        scale, tolerance = max(np.abs(logits).max(), 1e-3), relative_tolerance(variables, dtype)

        def close(actual, expected):
            assert_close(actual, expected, tolerance, scale)

        permutation = np.array([2, 0, 1])
        close(jitted(variables, x[permutation]), logits[permutation])
        for padding in (jnp.zeros_like(x[:1]), jnp.full_like(x[:1], jnp.nan)):
            padded = jitted(variables, jnp.concatenate([x[:2], padding]))
            close(padded[:2], logits[:2])
        alone = np.stack([jitted(variables, x[i:i + 1])[0] for i in range(BATCH)])
        close(alone, logits)


# The ImageNet models' eager runs (op by op, each op compiled on its own) take 10-30 s each on the 2-core VM: they
# run in the slow set; their blocks' jit == eager and vmap run in tests/layers/test_layer_properties.py.
IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
            "efficientnet_lite2"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=(pytest.mark.slow,) if name in IMAGENET else ())
                                  for name in list_models()])
def test_jit_equals_eager_and_vmap_equals_the_batch(name):
    """On the engine's path in float32: the jitted model equals the model applied op by op, and ``vmap`` over
    single examples equals the rows of the batched call."""
    model, x, variables = setup(name, jnp.float32)
    f = evaluation(model, "fused")
    logits = np.asarray(jax.jit(f)(variables, x))
    tolerance, scale = relative_tolerance(variables, jnp.float32), max(np.abs(logits).max(), 1e-3)
    assert_close(f(variables, x), logits, tolerance, scale)
    assert_close(jax.jit(jax.vmap(f, (None, 0)))(variables, x[:, None])[:, 0], logits, tolerance, scale)


def test_simple_cnn_batches_straddle_the_one_channel_map_bound():
    """The batches above take both kernels of the one size-dependent choice: batch 1's 26x26x32 float32 map is
    below ``ONE_CHANNEL_MAP_BYTES`` (a convolution op), batch 3's above it (shifted multiply-adds, no conv op)."""
    model, x, variables = setup("simple_cnn", jnp.float32)
    per_image = 26 * 26 * model.features[0] * 4
    assert per_image < fast.ONE_CHANNEL_MAP_BYTES <= BATCH * per_image
    f = jax.jit(evaluation(model, "fused"))

    def convolutions(x):
        text = f.lower(variables, x).as_text()
        return text.count("@cnn_jax_conv(") + text.count("convolution(")

    assert convolutions(x[:1]) == 2 and convolutions(x) == 1


# --------------------------------------------------------------------------------------------- circular shifts

# Every zoo model that takes ``padding_mode``, and whether its head pools globally (its logits are then invariant
# to circular shifts by multiples of its total stride; a flattening head keeps only the feature map's equivariance).
CIRCULAR = {"cnn3": False, "vgg_mini": False, **{f"resnet{depth}": True for depth in (20, 32, 44, 56)},
            "mobilenet_v2": True, **{f"efficientnet_lite{i}": True for i in range(3)}}

# One model of each family in the default suite (the others are the same code, deeper or wider): the rest are slow.
CIRCULAR_DEFAULT = {"cnn3", "resnet20", "mobilenet_v2", "efficientnet_lite0"}


def test_every_model_with_a_padding_mode_is_covered():
    takes = {name for name in list_models() if "padding_mode" in type(get_model(name, 10)).__dataclass_fields__}
    assert takes == set(CIRCULAR)


@functools.lru_cache(maxsize=None)
def circular(name):
    """The model with circular padding, its total stride, images two strides a side, its variables and its jitted
    (logits, features) in evaluation on the engine's path."""
    _, kwargs = SMALL[name]
    model = get_model(name, 10, padding_mode="circular", **kwargs)
    channels = model_spec(name).input_shape[-1]
    probe = jnp.zeros((1, 64, 64, channels))
    _, state = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False, mutable=True), probe)
    features = state["intermediates"]["features"][0]
    stride = 64 // features.shape[1]
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 2 * stride, 2 * stride, channels)), jnp.float32)
    variables = varied_variables(model, x, train=False)

    def logits_and_features(x):
        logits, state = fused_apply(model)(variables, x, train=False, mutable=["intermediates"])
        return logits, state["intermediates"]["features"][0]

    return stride, x, variables, jax.jit(logits_and_features)


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in CIRCULAR_DEFAULT else (pytest.mark.slow,))
                                  for name in CIRCULAR])
@examples(3)
@given(st.tuples(st.integers(-3, 3), st.integers(-3, 3)).filter(any))
def test_circular_models_commute_with_shifts_by_multiples_of_their_stride(name, blocks):
    """features(roll(x, s * t)) = roll(features(x), t) for the total stride s; logits unchanged where the head
    pools globally. Same float32 tolerance as above: the shifted map is summed in the same order, but oneDNN may
    tile the border otherwise."""
    stride, x, variables, f = circular(name)
    tolerance = relative_tolerance(variables, jnp.float32)
    logits, features = map(np.asarray, f(x))
    shifted_logits, shifted_features = f(jnp.roll(x, (stride * blocks[0], stride * blocks[1]), axis=(1, 2)))
    scale = np.abs(features).max()
    assert_close(shifted_features, np.roll(features, blocks, axis=(1, 2)), tolerance, scale)
    if CIRCULAR[name]:
        assert_close(shifted_logits, logits, tolerance, np.abs(logits).max())
