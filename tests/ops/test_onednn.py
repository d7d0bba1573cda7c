"""The oneDNN convolution primitive against XLA's convolution: values, every derivative, vmap, lowering; float32
and bfloat16.

float32 tolerance: sums of up to kh*kw*C products taken in a different order, so 1e-4 relative to the largest
magnitude of each result (the values are O(1) to O(100)).

bfloat16 tolerance, elementwise (``bfloat16_close``): oneDNN's bf16 kernels multiply the bf16 operands exactly
(8 + 8 significant bits fit float32's 24), accumulate the K products of a reduction in float32 and round the sum
to bf16 once. The reference is XLA's float32 convolution of the same bf16-rounded operands. With u = 2^-8, the unit
roundoff of bf16's 8-bit significand (7 stored bits and the implicit one), and M = the same convolution of the
operands' absolute values (the sum of |products|), each float32 sum is within K * 2^-24 * M of the exact one
(the standard bound for K additions), so

    |oneDNN - XLA| <= u * |XLA| + (2 + u) * K * 2^-24 * M,   checked as  u * |XLA| + 3 * K * 2^-24 * M.

K is kh*kw*C/G for the forward pass, kh*kw*F/G for the data gradient (at most that many products reach one input
pixel) and N*OH*OW for the weight gradient. The rounding term dominates for every shape here; a kernel that
rounded partial sums to bf16, or rounded the inputs differently, would exceed it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_geometries, examples
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from cnn_jax import layers, ops
from cnn_jax.ops import onednn

pytestmark = [pytest.mark.usefixtures("float32_precision"),
              pytest.mark.skipif(not onednn.available(), reason="oneDNN kernel not built here (see the log)")]

RELATIVE = 1e-4
BF16_UNIT_ROUNDOFF = 2.0 ** -8
F32_UNIT_ROUNDOFF = 2.0 ** -24
DTYPES = ("float32", "bfloat16")


def close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-6)
    assert np.abs(actual - expected).max() <= RELATIVE * scale, np.abs(actual - expected).max() / scale


def bfloat16_close(actual, expected, magnitude, terms: int):
    """The bound of the module docstring, elementwise: ``actual`` a bf16 result, ``expected`` the float32 reference,
    ``magnitude`` the reference on absolute values, ``terms`` the reduction length K."""
    assert actual.dtype == jnp.bfloat16 and actual.shape == expected.shape
    actual, expected, magnitude = (np.asarray(a, np.float64) for a in (actual, expected, magnitude))
    bound = BF16_UNIT_ROUNDOFF * np.abs(expected) + 3 * terms * F32_UNIT_ROUNDOFF * magnitude
    excess = np.abs(actual - expected) - bound
    worst = np.unravel_index(excess.argmax(), excess.shape)
    assert excess.max() <= 0, f"bound exceeded by {excess.max():.3g} at {worst}"


def check_bfloat16(mine, xla, x, w, groups, seed=0):
    """``mine`` on bf16 operands against ``xla`` in float32 on the same values: the forward pass and the vjp with
    a bf16 cotangent, i.e. oneDNN's forward, data-gradient and weight-gradient kernels, each within its bound."""
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    x32, w32 = x16.astype(jnp.float32), w16.astype(jnp.float32)
    y, vjp = jax.vjp(jax.jit(mine), x16, w16)
    ct16 = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape), jnp.bfloat16)
    ct32 = ct16.astype(jnp.float32)
    dx, dw = vjp(ct16)
    expected, xla_vjp = jax.vjp(xla, x32, w32)
    dx_ref, dw_ref = xla_vjp(ct32)
    abs_y, abs_vjp = jax.vjp(xla, jnp.abs(x32), jnp.abs(w32))
    dx_abs, dw_abs = abs_vjp(jnp.abs(ct32))
    kh, kw, in_per_group, features = w.shape
    n, out_h, out_w, _ = y.shape
    bfloat16_close(y, expected, abs_y, kh * kw * in_per_group)
    bfloat16_close(dx, dx_ref, dx_abs, kh * kw * features // groups)
    bfloat16_close(dw, dw_ref, dw_abs, n * out_h * out_w)


def arrays(x_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape), jnp.float32),
            jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32))


def both(strides, pads, dilations, groups=1):
    def xla(x, w):
        return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return (lambda x, w: onednn.conv2d(x, w, strides, pads, dilations, groups)), xla


@examples(40)  # both dtypes, about half the examples each
@given(conv_geometries(), st.sampled_from(DTYPES))
def test_forward_and_both_gradients_match_xla(geometry, dtype):
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, w = arrays(x_shape, kernel_shape)
    mine, xla = both(strides, pads, dilations, groups)
    if dtype == "bfloat16":
        check_bfloat16(mine, xla, x, w, groups)
        return
    close(jax.jit(mine)(x, w), xla(x, w))
    def loss(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))
    for got, want in zip(loss(mine)(x, w), loss(xla)(x, w)):
        close(got, want)


@pytest.mark.parametrize("geometry", [
    ((2, 9, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 17, 15, 3), (3, 3, 3, 4), (2, 1), ((1, 1), (1, 1)), (2, 1), 1),
    ((2, 11, 10, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 6),
], ids=["same", "strided-dilated", "depthwise"])
def test_second_order_forward_mode_and_vmap_match_xla(geometry):
    x_shape, kernel_shape, strides, pads, dilations, groups = geometry
    x, w = arrays(x_shape, kernel_shape)
    mine, xla = both(strides, pads, dilations, groups)
    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    def curvature(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jax.grad(loss(conv), 0)(x, w) ** 2), (0, 1)))
    for got, want in zip(curvature(mine)(x, w), curvature(xla)(x, w)):
        close(got, want)
    tangents = (jnp.cos(x), -w)
    close(jax.jvp(mine, (x, w), tangents)[1], jax.jvp(xla, (x, w), tangents)[1])
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, w ** 2, -w])
    close(jax.vmap(mine, (0, None))(xs, w), jax.vmap(xla, (0, None))(xs, w))
    close(jax.vmap(mine, (None, 0))(x, ws), jax.vmap(xla, (None, 0))(x, ws))
    close(jax.vmap(mine)(xs, ws[:2]), jax.vmap(xla)(xs, ws[:2]))


def test_training_step_lowers_every_convolution_to_onednn():
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 5))
    step = jax.jit(jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, stride=2, padding="CIRCULAR") ** 2), (0, 1)))
    text = step.lower(x, w).as_text()
    assert "convolution" not in text
    assert text.count("cnn_jax_conv") == 3  # forward, data gradient, weight gradient


TRAINING_SHAPES = pytest.mark.parametrize("x_shape, kernel_shape, strides, groups", [
    ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), 1),  # a CIFAR ResNet convolution
    ((32, 64, 64, 96), (3, 3, 1, 96), (2, 2), 96),  # EfficientNet-Lite depthwise convolutions at 128 px
    ((32, 8, 8, 480), (5, 5, 1, 480), (1, 1), 480),
], ids=["cifar-3x3", "depthwise-3x3-s2", "depthwise-5x5"])
needs_bfloat16 = pytest.mark.skipif(not onednn.bfloat16_native(), reason="no native oneDNN bf16 kernels on this CPU")


@TRAINING_SHAPES
@pytest.mark.parametrize("dtype", [pytest.param("float32"), pytest.param("bfloat16", marks=needs_bfloat16)])
def test_training_shapes_run_on_optimized_kernels(x_shape, kernel_shape, strides, groups, dtype):
    """Every mode gets a JIT-generated kernel, not oneDNN's reference loops; bfloat16 a bf16 one (AVX-512 BF16 or
    AMX instructions), except depthwise modes without a bf16 depthwise kernel, which take the f32 one."""
    pads = ((kernel_shape[0] // 2,) * 2,) * 2
    for mode in range(3):
        name = onednn.implementation(mode, x_shape, kernel_shape, strides, pads, (1, 1), groups, dtype)
        assert not name.startswith("ref") and "unavailable" not in name, name
        if dtype == "bfloat16":
            assert onednn.bfloat16_isa(name) or groups > 1 and name.endswith("(f32 on bf16 operands)"), name


@needs_bfloat16
@pytest.mark.parametrize("x_shape, kernel_shape, strides, groups", [
    ((32, 16, 16, 32), (3, 3, 32, 32), (1, 1), 1),  # resnet20's second stage: K = 288, 288 and 8,192
    ((16, 16, 16, 16), (3, 3, 16, 32), (2, 2), 1),  # its strided entry
    ((8, 14, 14, 48), (5, 5, 1, 48), (2, 2), 48),  # depthwise 5x5, both gradients on f32 kernels: K = 25, 25, 392
], ids=["resnet20-3x3", "strided", "depthwise-5x5-s2"])
def test_bfloat16_training_shapes_and_vmap_match_float32_xla(x_shape, kernel_shape, strides, groups):
    """The bound at reduction lengths of real training steps (the weight gradient sums over the whole batch), and
    vmap's folded batch, which runs the same kernels on a larger one."""
    pads = ((kernel_shape[0] // 2,) * 2,) * 2
    x, w = arrays(x_shape, kernel_shape, seed=3)
    mine, xla = both(strides, pads, (1, 1), groups)
    check_bfloat16(mine, xla, x, w, groups)
    xs, w16 = jnp.stack([x, -2 * x]).astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    xs32, w32 = xs.astype(jnp.float32), w16.astype(jnp.float32)
    def batched(conv, xs, w):
        return jax.vmap(conv, (0, None))(xs, w)
    bfloat16_close(batched(mine, xs, w16), batched(xla, xs32, w32), batched(xla, jnp.abs(xs32), jnp.abs(w32)),
                   int(np.prod(kernel_shape[:3])))


def custom_call_types(text: str) -> list:
    """The operand and result types of each oneDNN custom call in StableHLO ``text``."""
    return [line.rsplit(" : ", 1)[1] for line in text.splitlines() if "@cnn_jax_conv" in line]


@needs_bfloat16
@pytest.mark.parametrize("groups", [1, 2, 4], ids=["dense", "grouped", "depthwise"])
def test_bfloat16_layer_training_runs_on_onednn_with_float32_params(groups):
    """A bf16 ``layers.Conv`` (float32 params, cast by the layer) differentiated by its input and params lowers all
    three modes to the custom call on bf16 operands, no XLA convolution, and returns float32 gradients."""
    conv = layers.Conv(4, 3, strides=2, groups=groups, dtype=jnp.bfloat16)
    x = jnp.zeros((2, 8, 8, 4))
    variables = conv.init(jax.random.key(0), x)
    step = jax.jit(jax.grad(lambda v, x: jnp.sum(conv.apply(v, x).astype(jnp.float32) ** 2), (0, 1)))
    text = step.lower(variables, x).as_text()
    assert "convolution" not in text
    types = custom_call_types(text)
    assert len(types) == 3 and all("bf16" in t and "f32" not in t for t in types), types
    grads = jax.tree.leaves(step(variables, x))
    assert all(g.dtype == jnp.float32 for g in grads)


def test_float32_convolutions_take_float32_kernels_and_bfloat16_without_native_kernels_leaves_onednn():
    """float32 (grouped too) stays on float32 kernels; where oneDNN would serve bf16 only from its reference loops,
    bf16 convolutions go to XLA (dense) or the shifted multiply-adds (depthwise) instead."""
    grouped = jax.jit(lambda x, w: ops.conv2d(x, w, groups=2)).lower(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 2, 4)))
    assert all("f32" in t and "bf16" not in t for t in custom_call_types(grouped.as_text()))
    x = jnp.zeros((1, 8, 8, 4), jnp.bfloat16)
    with mock.patch.object(onednn, "bfloat16_native", lambda: False):
        dense = jax.jit(ops.conv2d).lower(x, jnp.zeros((3, 3, 4, 4), jnp.bfloat16)).as_text()
        depthwise = jax.jit(lambda x, w: ops.conv2d(x, w, groups=4)).lower(x, jnp.zeros((3, 3, 1, 4), jnp.bfloat16))
    assert "cnn_jax_conv" not in dense and "convolution" in dense
    assert "cnn_jax_conv" not in depthwise.as_text() and "convolution" not in depthwise.as_text()


@needs_bfloat16
def test_bfloat16_training_step_executes_bf16_kernels_in_onednn_verbose():
    """What oneDNN itself reports running (ONEDNN_VERBOSE) for a bf16 forward + backward: one forward, one
    backward-data and one backward-weights convolution, each a bf16 JIT kernel on bf16 memory."""
    code = ("import jax, jax.numpy as jnp; from cnn_jax import ops; x, w = jnp.ones((2, 8, 8, 4), jnp.bfloat16), "
            "jnp.ones((3, 3, 4, 8), jnp.bfloat16); jax.block_until_ready(jax.jit(jax.grad(lambda x, w: "
            "jnp.sum(ops.conv2d(x, w, stride=2).astype(jnp.float32) ** 2), (0, 1)))(x, w))")
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    runs = [line.split(",") for line in done.stdout.splitlines() if line.startswith("onednn_verbose,exec,cpu,conv")]
    assert sorted(fields[5] for fields in runs) == ["backward_data", "backward_weights", "forward_training"], runs
    for fields in runs:
        implementation, memories = fields[4], fields[6].split()
        assert onednn.bfloat16_isa(implementation) and not implementation.startswith("ref"), implementation
        assert all(m.split(":")[0].endswith(("_bf16", "_undef")) for m in memories), memories


def lowered_in_fresh_process(batch: int, **environment) -> str:
    """The StableHLO of a jitted 3x3 convolution, lowered by a new Python with ``environment`` added."""
    code = ("import jax.numpy as jnp, jax; from cnn_jax import ops; "
            f"print(jax.jit(ops.conv2d).lower(jnp.zeros(({batch}, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))).as_text())")
    env = dict(os.environ, **environment)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_environment_variable_keeps_convolutions_on_xla():
    text = lowered_in_fresh_process(1, CNN_JAX_KERNELS="portable")
    assert "convolution" in text and "cnn_jax_conv" not in text


def test_without_a_compiler_convolutions_fall_back_to_xla_with_a_warning(tmp_path):
    code = ("import jax.numpy as jnp, numpy as np; from cnn_jax import ops; from cnn_jax.ops import onednn; "
            "print(onednn.available()); "
            "print(float(ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))).sum()))")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), CNN_JAX_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "100.0"]  # 4 corners x 4 + 8 edges x 6 + 4 inner x 9
    assert "no C++ compiler" in done.stderr and "using XLA's" in done.stderr


def test_several_cpu_devices_keep_convolutions_on_xla():
    """A custom call cannot be partitioned: with data parallelism over CPU devices, convolutions stay XLA's."""
    text = lowered_in_fresh_process(8, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert "convolution" in text and "cnn_jax_conv" not in text
