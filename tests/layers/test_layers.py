"""Tests of ``cnn_jax.layers``.

Output shapes against ``conv_output_size``, parameter counts of blocks whose published counts are known,
the dtype policy (compute in ``dtype``, params in float32), BatchNorm in train and eval mode, the structure of
shortcuts, and translation equivariance of circularly padded blocks in eval mode.
Shapes and counts use ``jax.eval_shape`` (nothing compiles). Value tests fill variables from NumPy instead of
calling ``init`` (which compiles a program of its own, slower than the forward pass) and compile one forward pass.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import layers, ops

KEY = jax.random.key(0)
REORDERED = dict(rtol=1e-5, atol=1e-5)  # float32 sums in another order (rolled inputs, conv vs ops.conv2d)
BFLOAT16 = dict(rtol=5e-2, atol=5e-2)   # bfloat16 keeps 8 significant bits: ~0.4% per rounding, a few roundings
pytestmark = pytest.mark.usefixtures("float32_precision")


def takes_train(module):
    return not isinstance(module, (layers.Conv, layers.SqueezeExcite))


def abstract_init(module, x):
    """(output, variables) as ShapeDtypeStructs."""
    extra = dict(train=False) if takes_train(module) else {}
    return jax.eval_shape(lambda: module.init_with_output(KEY, x, **extra))


def random_variables(module, x, seed=0):
    """Variables shaped as ``module.init`` makes them: kernels ~ N(0, 1 / fan_in), BatchNorm scales and running
    variances uniform in [0.5, 1.5], biases and running means ~ N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            values = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "kernel":
            values = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            values = 0.1 * rng.standard_normal(leaf.shape)
        return values.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_init(module, x)[1])


def forward(module, variables, **kwargs):
    """The jitted forward pass (eval mode unless ``train=True`` is given) of ``module`` with ``variables``."""
    kwargs = {"train": False, **kwargs} if takes_train(module) else kwargs
    return jax.jit(lambda x: module.apply(variables, x, **kwargs))


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def chain(size, path):
    """Output size after a path of (kernel, stride, padding, dilation) convs, by ``conv_output_size``."""
    for kernel, stride, padding, dilation in path:
        size = ops.conv_output_size(size, kernel, stride, padding, dilation)
    return size


# ----------------------------------------------------------------------------------------------- shapes

SIZES = st.integers(1, 12)
MODES = st.sampled_from(layers.conv.PADDING_MODES)


@st.composite
def conv_modules(draw):
    """A Conv (any ops padding) or ConvBN (any padding mode), an input that fits it, and its output shape."""
    groups = draw(st.sampled_from([1, 2]))
    kernel, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    features = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):
        padding = draw(st.one_of(st.sampled_from(["SAME", "VALID", "CIRCULAR"]), st.integers(0, 2),
                                 st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                           st.tuples(st.integers(0, 2), st.integers(0, 2)))))
        module = layers.Conv(features, kernel, stride, padding, dilation, groups)
    else:
        module = layers.ConvBN(features, kernel, stride, padding_mode=draw(MODES), dilation=dilation, groups=groups)
        padding = layers.padding_for(module.padding_mode, kernel, dilation)
    per_axis = [padding if isinstance(padding, (str, int)) else padding[axis] for axis in range(2)]
    sizes, out = [], []
    for p in per_axis:
        if p in ("SAME", "CIRCULAR"):
            fits = 1
        else:
            zeros = 0 if p == "VALID" else 2 * p if isinstance(p, int) else sum(p)
            fits = max(1, dilation * (kernel - 1) + 1 - zeros)
        sizes.append(fits + draw(st.integers(0, 6)))
        out.append(ops.conv_output_size(sizes[-1], kernel, stride, p, dilation))
    return module, (2, *sizes, 2 * groups), (2, *out, features)


@given(conv_modules())
def test_conv_module_shapes_follow_conv_output_size(conv):
    module, in_shape, out_shape = conv
    out, _ = abstract_init(module, jnp.zeros(in_shape))
    assert out.shape == out_shape


@st.composite
def blocks(draw):
    """A residual, bottleneck or inverted residual block, and the (kernel, stride, padding, dilation) path that
    sets its output size."""
    strides, mode = draw(st.sampled_from([1, 2])), draw(MODES)
    kind = draw(st.sampled_from(["residual", "bottleneck", "inverted"]))
    if kind == "residual":
        shortcut = draw(st.sampled_from(layers.blocks.SHORTCUTS))
        features = draw(st.sampled_from([4, 8]))  # from 4 input channels: identity or a widening shortcut
        module = layers.ResidualBlock(features, strides, shortcut, mode)
        return module, features, [(3, strides, layers.padding_for(mode, 3), 1)]
    if kind == "bottleneck":
        stride_on = draw(st.sampled_from(["3x3", "1x1"]))
        module = layers.Bottleneck(draw(st.sampled_from([1, 2])), strides, stride_on=stride_on, padding_mode=mode)
        first, second = (1, strides) if stride_on == "3x3" else (strides, 1)
        return module, 4 * module.features, [(1, first, 0, 1), (3, second, layers.padding_for(mode, 3), 1)]
    kernel = draw(st.sampled_from([3, 5]))
    module = layers.InvertedResidual(draw(st.sampled_from([4, 6])), strides, draw(st.sampled_from([1, 6])), kernel,
                                     se_ratio=draw(st.sampled_from([None, 0.25])), padding_mode=mode)
    return module, module.features, [(kernel, strides, layers.padding_for(mode, kernel), 1)]


@given(blocks(), SIZES, SIZES)
def test_block_shapes_follow_conv_output_size(block, height, width):
    module, features, path = block
    out, _ = abstract_init(module, jnp.zeros((1, height, width, 4)))
    assert out.shape == (1, chain(height, path), chain(width, path), features)


def test_squeeze_excite_keeps_the_shape():
    out, variables = abstract_init(layers.SqueezeExcite(2), jnp.zeros((2, 5, 3, 8)))
    assert out.shape == (2, 5, 3, 8)
    assert variables["params"]["reduce"]["kernel"].shape == (1, 1, 8, 2)


# ---------------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("module, channels, expected", [
    # torchvision resnet18.layer1[0] and resnet50.layer1[0] (He et al. 2016; torchvision's structure)
    (layers.ResidualBlock(64), 64, 73_984),
    (layers.Bottleneck(64), 64, 75_008),
    # Keras ResNet50 conv2_block1: the same plus one bias per conv output (64 + 64 + 256 + 256)
    (layers.Bottleneck(64, stride_on="1x1", use_bias=True), 64, 75_648),
    # a widening CIFAR ResNet block: projection (1x1 conv + BN) vs option A (no parameters)
    (layers.ResidualBlock(32, 2), 16, 9 * 16 * 32 + 64 + 9 * 32 * 32 + 64 + 16 * 32 + 64),
    (layers.ResidualBlock(32, 2, shortcut="pad"), 16, 9 * 16 * 32 + 64 + 9 * 32 * 32 + 64),
    # torchvision mobilenet_v2.features[1] (expansion 1, no expand conv) and features[2]
    (layers.InvertedResidual(16, expansion=1), 32, 896),
    (layers.InvertedResidual(24, 2), 16, 5_136),
    # the same with squeeze-excitation of 16 * 0.25 = 4 channels on the 96 hidden ones (biased 1x1 convs)
    (layers.InvertedResidual(24, 2, se_ratio=0.25), 16, 5_136 + 96 * 4 + 4 + 4 * 96 + 96),
])
def test_parameter_counts_of_known_blocks(module, channels, expected):
    _, variables = abstract_init(module, jnp.zeros((1, 8, 8, channels)))
    assert ops.count_params(variables["params"]) == expected


def test_parameter_free_shortcut_has_no_parameters():
    _, variables = abstract_init(layers.ResidualBlock(32, 2, shortcut="pad"), jnp.zeros((1, 8, 8, 16)))
    assert set(variables["params"]) == {"conv1", "conv2"}
    _, variables = abstract_init(layers.ResidualBlock(32, 2), jnp.zeros((1, 8, 8, 16)))
    assert set(variables["params"]) == {"conv1", "conv2", "shortcut"}


# ------------------------------------------------------------------------------------------------ dtype

@pytest.mark.parametrize("module", [layers.Conv(6, 3, groups=2), layers.ConvBN(6, 3, 2, "same")],
                         ids=["Conv", "ConvBN"])
def test_bfloat16_modules_compute_in_bfloat16_and_keep_float32_variables(module):
    x = normal(0, (2, 6, 6, 4))
    half = module.clone(dtype=jnp.bfloat16)
    _, abstract = abstract_init(half, x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}
    variables = random_variables(module, x)
    out, full = forward(half, variables)(x), forward(module, variables)(x)
    assert out.dtype == jnp.bfloat16 and full.dtype == jnp.float32
    np.testing.assert_allclose(out.astype(jnp.float32), full, **BFLOAT16)


BF16_BLOCKS = {
    "residual-identity": (layers.ResidualBlock(8, dtype=jnp.bfloat16), 8),
    "residual-projection": (layers.ResidualBlock(16, 2, dtype=jnp.bfloat16), 8),
    "residual-pad": (layers.ResidualBlock(16, 2, shortcut="pad", dtype=jnp.bfloat16), 8),
    "bottleneck-identity": (layers.Bottleneck(2, dtype=jnp.bfloat16), 8),
    "bottleneck-projection": (layers.Bottleneck(4, 2, dtype=jnp.bfloat16), 8),
    "inverted-residual": (layers.InvertedResidual(8, se_ratio=0.25, dtype=jnp.bfloat16), 8),
    "squeeze-excite": (layers.SqueezeExcite(2, dtype=jnp.bfloat16), 8),
}


@pytest.mark.parametrize("name", BF16_BLOCKS)
def test_bfloat16_blocks_on_bfloat16_inputs(name):
    module, channels = BF16_BLOCKS[name]
    out, variables = abstract_init(module, jnp.zeros((1, 6, 6, channels), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", list(BF16_BLOCKS))
def test_bfloat16_blocks_on_float32_inputs_return_bfloat16(name):
    module, channels = BF16_BLOCKS[name]
    out, _ = abstract_init(module, jnp.zeros((1, 6, 6, channels), jnp.float32))
    assert out.dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------- BatchNorm

def test_batchnorm_updates_statistics_in_train_mode_and_uses_them_in_eval_mode():
    module = layers.ConvBN(3, 3, activation=None, bn_momentum=0.9, bn_epsilon=1e-3)
    x = normal(0, (4, 5, 5, 2)) + 2
    variables = random_variables(module, x)
    params, running = variables["params"], variables["batch_stats"]["bn"]
    conv = np.asarray(ops.conv2d(x, params["conv"]["kernel"], padding=1))
    batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    def affine(normalized):
        return normalized * params["bn"]["scale"] + params["bn"]["bias"]

    out, updates = forward(module, variables, train=True, mutable=["batch_stats"])(x)
    stats = updates["batch_stats"]["bn"]
    # Flax momentum: running = 0.9 * running + 0.1 * batch (PyTorch's momentum 0.1); the biased batch variance.
    np.testing.assert_allclose(stats["mean"], 0.9 * running["mean"] + 0.1 * batch_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 * running["var"] + 0.1 * batch_var, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, affine((conv - batch_mean) / np.sqrt(batch_var + 1e-3)), rtol=1e-4, atol=1e-4)

    evaluated = forward(module, variables)(x)
    np.testing.assert_allclose(evaluated, affine((conv - running["mean"]) / np.sqrt(running["var"] + 1e-3)),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ block structure

def zeroed(variables, *path):
    """Variables with the BatchNorm of the ConvBN at ``path`` set to output zeros (scale 0, bias 0)."""
    params = jax.tree_util.tree_map(np.copy, variables["params"])
    unit = params
    for name in path:
        unit = unit[name]
    unit["bn"] = {"scale": np.zeros_like(unit["bn"]["scale"]), "bias": np.zeros_like(unit["bn"]["bias"])}
    return {**variables, "params": params}


@pytest.mark.parametrize("module, residual", [
    (layers.InvertedResidual(8), True),
    (layers.InvertedResidual(8, kernel_size=5, expansion=1, se_ratio=0.25), True),
    (layers.InvertedResidual(12), False),
    (layers.InvertedResidual(8, 2), False),
], ids=["kept", "kept-5x5-se", "wider", "strided"])
def test_inverted_residual_adds_its_input_only_when_the_shape_is_kept(module, residual):
    x = normal(0, (1, 6, 6, 8))
    out = np.asarray(forward(module, zeroed(random_variables(module, x), "project"))(x))
    np.testing.assert_array_equal(out, x if residual else np.zeros_like(out))


def batchnorm(y, unit, stats, epsilon=1e-5):
    return (y - stats["mean"]) / np.sqrt(stats["var"] + epsilon) * unit["bn"]["scale"] + unit["bn"]["bias"]


@pytest.mark.parametrize("features, strides, shortcut", [(4, 1, "projection"), (8, 2, "pad"), (8, 2, "projection")])
def test_residual_block_with_a_zeroed_residual_branch_is_relu_of_its_shortcut(features, strides, shortcut):
    """What zero_init_residual starts from (Goyal et al. 2017): identity, option A, or a strided 1x1 ConvBN."""
    module = layers.ResidualBlock(features, strides, shortcut)
    x = normal(0, (1, 6, 6, 4))
    variables = zeroed(random_variables(module, x), "conv2")
    out = np.asarray(forward(module, variables)(x))
    subsampled = x[:, ::strides, ::strides]
    if features == 4:
        expected = x
    elif shortcut == "pad":  # subsample, then 2 zero channels on each side
        expected = np.pad(subsampled, ((0, 0),) * 3 + ((2, 2),))
    else:
        unit, stats = variables["params"]["shortcut"], variables["batch_stats"]["shortcut"]["bn"]
        expected = batchnorm(subsampled @ unit["conv"]["kernel"][0, 0], unit, stats)
    np.testing.assert_allclose(out, np.maximum(expected, 0), **REORDERED)


# --------------------------------------------------------------------------------------- equivariance

EQUIVARIANT = {
    # name: (a circularly padded block, input channels, the shift unit: its stride)
    "residual-identity": (layers.ResidualBlock(4, padding_mode="circular"), 4, 1),
    "residual-projection": (layers.ResidualBlock(6, padding_mode="circular"), 4, 1),
    "residual-strided-projection": (layers.ResidualBlock(8, 2, padding_mode="circular"), 4, 2),
    "residual-strided-pad": (layers.ResidualBlock(8, 2, shortcut="pad", padding_mode="circular"), 4, 2),
    "bottleneck": (layers.Bottleneck(2, padding_mode="circular"), 4, 1),
    "inverted-residual-se": (layers.InvertedResidual(4, kernel_size=5, se_ratio=0.5, padding_mode="circular"), 4, 1),
}
SHIFTS = [(1, 0), (0, 3), (-2, 5), (7, -4)]


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_circular_blocks_are_translation_equivariant(name):
    """block(roll(x, s * t)) = roll(block(x), t) for the block's stride s (escnn-style f(g x) = g f(x))."""
    module, channels, stride = EQUIVARIANT[name]
    x = normal(0, (2, 8, 8, channels))
    block = forward(module, random_variables(module, x))  # eval mode, non-trivial running statistics
    out = block(x)
    for shift in SHIFTS:
        shifted_in = np.roll(x, tuple(stride * s for s in shift), axis=(1, 2))
        np.testing.assert_allclose(block(shifted_in), np.roll(out, shift, axis=(1, 2)), **REORDERED)


def test_zero_padded_blocks_are_not_translation_equivariant():
    """The property above is not vacuous: zero padding breaks it at the border."""
    module = layers.ResidualBlock(4, padding_mode="symmetric")
    x = normal(0, (2, 8, 8, 4))
    block = forward(module, random_variables(module, x))
    assert not np.allclose(block(np.roll(x, 1, axis=1)), np.roll(block(x), 1, axis=1), **REORDERED)


# ----------------------------------------------------------------------------------------- the rest

@pytest.mark.parametrize("mode, kernel, dilation, expected", [
    ("same", 3, 1, "SAME"), ("circular", 5, 1, "CIRCULAR"), ("symmetric", 3, 1, 1), ("symmetric", 7, 1, 3),
    ("symmetric", 3, 2, 2), ("symmetric", 1, 1, 0)])
def test_padding_for(mode, kernel, dilation, expected):
    assert layers.padding_for(mode, kernel, dilation) == expected


def test_normalize():
    x = normal(0, (2, 3, 3, 3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = layers.Normalize(mean, std).apply({}, x)
    np.testing.assert_allclose(out, (x - np.float32(mean)) / np.float32(std), rtol=1e-6)
    with pytest.raises(ValueError, match="2 means / 1 stds for 3 channels"):
        layers.Normalize((0.5, 0.5), (0.25,)).apply({}, x)


@pytest.mark.parametrize("module, channels, match", [
    (layers.Conv(4, groups=3), 4, "groups=3 does not divide the 4 input channels"),
    (layers.ConvBN(4, padding_mode="reflect"), 4, "unknown padding mode 'reflect'"),
    (layers.ResidualBlock(8, shortcut="identity"), 4, "unknown shortcut 'identity'"),
    (layers.ResidualBlock(4, 2, shortcut="pad"), 8, "cannot reduce 8 channels to 4"),
    (layers.Bottleneck(4, stride_on="5x5"), 4, "stride_on must be '3x3'"),
])
def test_layers_reject_bad_configurations_clearly(module, channels, match):
    with pytest.raises(ValueError, match=match):
        abstract_init(module, jnp.zeros((1, 8, 8, channels)))


@pytest.mark.parametrize("shape, rate, broadcast_dims", [((128, 1600), 0.5, ()), ((3, 5, 7, 4), 0.1, (1, 2)),
                                                          ((2, 9), 0.75, (-1,)), ((1,), 0.3, ())])
def test_dropout_masks_are_flax_masks_bit_for_bit(shape, rate, broadcast_dims):
    # The unrolled hash draws the masks of nn.Dropout (same rng stream, same bits), so runs trained before the
    # change reproduce; the mask is also the one jax.random.bernoulli draws.
    x = jnp.asarray(normal(0, shape))
    for seed in range(3):
        rngs = {"dropout": jax.random.key(seed)}
        ours = jax.jit(lambda x, rngs: layers.Dropout(rate, broadcast_dims).apply({}, x, deterministic=False,
                                                                                rngs=rngs))
        theirs = nn.Dropout(rate, broadcast_dims).apply({}, x, deterministic=False, rngs=rngs)
        np.testing.assert_array_equal(ours(x, rngs), theirs)
    key = jax.random.key(11)
    np.testing.assert_array_equal(jax.jit(lambda k: ops.bernoulli(k, 0.3, shape))(key),
                                  jax.random.bernoulli(key, 0.3, shape))


def test_dropout_keeps_about_one_minus_rate_and_rescales():
    x = jnp.ones((200, 500))
    y = layers.Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    kept = np.asarray(y != 0)
    assert abs(kept.mean() - 0.75) < 0.005  # 100,000 draws: one standard deviation is 0.0014
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    assert layers.Dropout(0.25).apply({}, x, deterministic=True) is x


@pytest.mark.parametrize("mode", ["fast", "portable"])
@pytest.mark.parametrize("use_scale, dtype", [(True, jnp.float32), (False, jnp.float32), (True, jnp.bfloat16)])
def test_batch_norm_is_flax_batch_norm(use_scale, dtype, mode):
    # Same variables, same forward values and running averages as nn.BatchNorm; gradients within float32 rounding
    # of JAX's own (mode "fast" writes them out, summing in another order; "portable" is JAX's derivative). The
    # input's mean (3) is three times its spread, as a conv's output can be: the per-channel sums must not lose
    # it. The reference runs in float32 on the same values: ours computes in float32 and rounds once at the end.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 1.0, (16, 6, 5, 8)), dtype)
    ours = layers.BatchNorm(use_running_average=False, momentum=0.9, use_scale=use_scale, dtype=dtype)
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9, use_scale=use_scale, dtype=jnp.float32)
    variables = theirs.init(KEY, x)
    assert jax.tree.structure(ours.init(KEY, x)) == jax.tree.structure(variables)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.3, p.shape), jnp.float32), variables["params"])
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(apply, params, x):
        y, updates = apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(y.astype(jnp.float32) * weights), (y, updates)

    def apply_ours(v, x):
        return ours.apply(v, x, mutable=["batch_stats"])

    def apply_theirs(v, x):
        return theirs.apply(v, x.astype(jnp.float32), mutable=["batch_stats"])

    with ops.kernels(mode):
        grad = jax.jit(jax.grad(functools.partial(loss, apply_ours), argnums=(0, 1), has_aux=True))
        grads, (y, updates) = grad(params, x)
    grads_ref, (y_ref, updates_ref) = jax.grad(functools.partial(loss, apply_theirs), argnums=(0, 1),
                                               has_aux=True)(params, x)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == jnp.float32 else BFLOAT16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), **tolerance)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), updates, updates_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         **tolerance), grads, grads_ref)


def test_batch_norm_gradient_is_written_out_except_in_portable_mode():
    """The hand-written VJP is a custom_vjp call in the traced gradient; mode "portable" has none."""
    x = jnp.ones((4, 3, 3, 2))
    module = layers.BatchNorm(use_running_average=False)
    variables = module.init(KEY, x)
    def loss(x):
        return module.apply(variables, x, mutable=["batch_stats"])[0].sum()
    assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(x))
    with ops.kernels("portable"):
        assert "custom_vjp_call" not in str(jax.make_jaxpr(loss)(x))


def test_conv_bn_refuses_a_residual_of_another_shape():
    x = jnp.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"residual has shape \(2, 1, 1, 3\), the normalized branch \(2, 4, 4, 3\)"):
        layers.ConvBN(3).init(KEY, x, residual=jnp.ones((2, 1, 1, 3)))


def test_conv_bn_in_eval_mode_uses_the_running_averages_and_jax_nn_relu():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 3, 5)), jnp.float32)
    module = layers.ConvBN(5, 1, groups=5)
    variables = {"params": {"conv": {"kernel": jnp.ones((1, 1, 1, 5))},
                            "bn": {"scale": jnp.full(5, 2.0), "bias": jnp.full(5, -0.5)}},
                 "batch_stats": {"bn": {"mean": jnp.full(5, 0.25), "var": jnp.full(5, 4.0)}}}
    expected = np.maximum((np.asarray(x) - 0.25) / np.sqrt(4.0 + 1e-5) * 2.0 - 0.5, 0.0)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-6, atol=1e-6)
    # Guided backpropagation rewrites jax.nn.relu calls: the layer's ReLU must be one.
    assert "relu" in str(jax.make_jaxpr(lambda x: module.apply(variables, x))(x))
