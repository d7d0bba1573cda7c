"""Every derivative that cnn_jax writes by hand, checked to second order against finite differences
(``jax.test_util.check_grads``, order 2): forward and reverse mode where the rule defines them.

- max pooling's custom_jvp, non-overlapping (``_window_max``) and overlapping or padded (``_strided_max``);
- ``conv2d_epilogue``'s custom_jvp (the value from the fused oneDNN kernel, the derivative of the separate ops);
- the one-channel shifted convolution's custom_jvp (the per-op convolution's derivative);
- the oneDNN convolution primitive, whose transposes are its own data- and weight-gradient kernels;
- BatchNorm's hand-written VJP, a custom_vjp: reverse mode only, to any order (JAX differentiates its backward
  rule); forward mode is not defined for it, and that is tested too.

Each test first checks that the hand-written rule is really on the traced path, so that a change of kernel choice
cannot turn it into a check of JAX's own derivatives.

Tolerances (float32): the functions checked are bilinear (convolutions), piecewise linear (pools, ReLU away from
its kinks) or smooth (BatchNorm). Central differences are exact for the first two, so only rounding remains:
about 2^-24 |f| / eps, 6e-6 relative at eps = 1e-2; for BatchNorm the truncation term eps^2 |f'''| / 6 adds about
1e-4 relative. ``GRADIENT``'s 2e-3 leaves a margin above both, and a wrong rule (a missing term, a transposed
kernel) is off by O(1).
"""
from __future__ import annotations

import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cnn_jax import ops
from cnn_jax.ops import fast, onednn

GRADIENT = dict(eps=1e-2, atol=2e-3, rtol=2e-3)
BOTH = ("fwd", "rev")
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN kernel not built here (see the log)")
pytestmark = pytest.mark.usefixtures("float32_precision")


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def spaced(seed, shape):
    """Distinct values 0.1 apart: a finite-difference step (eps times a unit-normal tangent, below 0.05) never
    changes which value of a window is its maximum."""
    return jnp.asarray(np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape) / 10, jnp.float32)


def lowered(f, *args) -> str:
    return jax.jit(f).lower(*args).as_text()


# ------------------------------------------------------------------------------------------- max pooling

@pytest.mark.parametrize("window, stride, padding", [((2, 3), None, "VALID"), (3, 2, ((1, 0), (2, 1)))],
                         ids=["tiles", "overlapping-padded"])
def test_max_pool_derivative_to_second_order(window, stride, padding):
    x = spaced(0, (2, 6, 7, 2))

    def pool(x):
        return ops.max_pool(x, window, stride, padding)

    assert "custom_jvp_call" in str(jax.make_jaxpr(pool)(x))
    check_grads(jax.jit(pool), (x,), order=2, modes=BOTH, **GRADIENT)


# -------------------------------------------------------------------------------- the fused epilogue

EPILOGUE_SHIFTS = {
    # activation: per-channel shifts that keep every pre-activation at least 1 away from the activation's kinks
    # (0, and 6 for ReLU6) for inputs and kernels of norm ~0.3, so finite differences never cross one.
    None: (0.0, 0.5, -0.5, 1.0),
    "relu": (-4.0, 4.0, -4.0, 4.0),
    "relu6": (-4.0, 3.0, 10.0, 3.0),
}


@needs_onednn
@pytest.mark.parametrize("activation, residual", [(None, True), ("relu6", False)])
def test_conv2d_epilogue_derivative_to_second_order(activation, residual):
    x, kernel = normal(0, (2, 5, 6, 3), 0.3), normal(1, (3, 3, 3, 4), 0.1)
    scale, shift = normal(2, (4,), 0.5), jnp.asarray(EPILOGUE_SHIFTS[activation], jnp.float32)
    args = (x, kernel, scale, shift) + ((normal(3, (2, 5, 6, 4), 0.1),) if residual else ())

    def f(x, kernel, scale, shift, *residual):
        return ops.conv2d_epilogue(x, kernel, scale, shift, residual[0] if residual else None, activation, padding=1)

    assert re.findall(r"custom_call @(\w+)", lowered(f, *args)) == ["cnn_jax_conv_fused"]
    check_grads(jax.jit(f), args, order=2, modes=BOTH, **GRADIENT)


# ---------------------------------------------------------------------- the one-channel shifted convolution

@needs_onednn
@pytest.mark.parametrize("stride, padding, dilation", [(2, "CIRCULAR", 2)])
def test_one_channel_shifted_convolution_derivative_to_second_order(stride, padding, dilation):
    x, kernel = normal(0, (2, 7, 8, 1)), normal(1, (3, 3, 1, 4), 1 / 3)

    def f(x, kernel):
        return ops.conv2d(x, kernel, stride=stride, padding=padding, dilation=dilation)

    with mock.patch.object(fast, "ONE_CHANNEL_MAP_BYTES", 0):  # read as the function is traced
        assert "custom_jvp_call" in str(jax.make_jaxpr(f)(x, kernel))
        check_grads(jax.jit(f), (x, kernel), order=2, modes=BOTH, **GRADIENT)


# ----------------------------------------------------------------------------- the oneDNN convolution

@needs_onednn
@pytest.mark.parametrize("x_shape, kernel_shape, stride, padding, dilation, groups", [
    ((2, 6, 5, 4), (3, 2, 2, 6), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    ((1, 6, 6, 3), (3, 3, 1, 3), 1, 1, 2, 3),  # depthwise
], ids=["grouped-strided-dilated", "depthwise"])
def test_onednn_convolution_derivatives_to_second_order(x_shape, kernel_shape, stride, padding, dilation, groups):
    """Second order runs the transposes of the data- and weight-gradient kernels: every mode of the primitive."""
    x, kernel = normal(0, x_shape), normal(1, kernel_shape, np.prod(kernel_shape[:3]) ** -0.5)

    def f(x, kernel):
        return ops.conv2d(x, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)

    def squared_gradient(x, kernel):
        return jnp.sum(jax.grad(lambda x, k: jnp.sum(f(x, k) ** 2), (0, 1))(x, kernel)[0] ** 2)

    text = lowered(jax.grad(squared_gradient, (0, 1)), x, kernel)
    assert "convolution(" not in text and "cnn_jax_conv" in text
    check_grads(jax.jit(f), (x, kernel), order=2, modes=BOTH, **GRADIENT)


# ----------------------------------------------------------------------------------------- BatchNorm

def batch_norm_output(x, scale, bias):
    """Training BatchNorm's output; the batch statistics it also returns feed only the running averages, and the
    hand-written VJP gives them no cotangent."""
    return ops.batch_norm_train(x, scale, bias, 1e-3)[0]


def test_batch_norm_vjp_to_second_order():
    x = normal(0, (4, 3, 3, 5)) + 2.0  # a mean away from zero, as a conv output's can be
    scale, bias = normal(1, (5,), 0.5) + 1.0, normal(2, (5,), 0.5)
    assert "custom_vjp_call" in str(jax.make_jaxpr(batch_norm_output)(x, scale, bias))
    check_grads(jax.jit(batch_norm_output), (x, scale, bias), order=2, modes=("rev",), **GRADIENT)


def test_batch_norm_vjp_has_no_forward_mode_but_portable_mode_has():
    """A custom_vjp defines reverse mode only: jvp (and so jax.hessian's forward-over-reverse) refuses it, by
    design (training needs reverse mode; a forward rule would be a second hand-written derivative to keep equal).
    Mode "portable" runs the reference with JAX's derivative, which has forward mode."""
    x, scale, bias = normal(0, (4, 3, 3, 5)), jnp.ones(5), jnp.zeros(5)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(batch_norm_output, (x, scale, bias), (x, scale, bias))
    with ops.kernels("portable"):
        _, tangent = jax.jvp(batch_norm_output, (x, scale, bias), (x, scale, bias))
    assert np.isfinite(tangent).all()
