"""Times depthwise convolution lowerings on this machine: XLA's grouped convolution, shifted multiply-adds, oneDNN.

    python scripts/bench_conv.py [--batch=16] [--repeats=5]

For depthwise shapes (MobileNetV2 / EfficientNet-Lite) ``ops.conv2d`` runs float32 on oneDNN on CPU, and other
dtypes (or several CPU devices) on shifted multiply-adds; the table shows forward and forward+backward (input and
kernel gradients) milliseconds for each of the three.
"""
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from cnn_jax import ops
from cnn_jax.ops import onednn

_BATCH = flags.DEFINE_integer("batch", 16, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (best of 2 rounds).")

# (size, channels, kernel, stride): depthwise layers of MobileNetV2 and EfficientNet-Lite0 at 224x224.
DEPTHWISE = [(112, 32, 3, 1), (56, 96, 3, 2), (28, 144, 5, 1), (14, 480, 3, 1), (14, 672, 5, 2)]


def milliseconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(_REPEATS.value):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / _REPEATS.value * 1e3)
    return best


def main(argv):
    del argv
    print(f"backend {jax.default_backend()}, batch {_BATCH.value}")
    columns = [f"{path} {kind}" for kind in ("fwd", "grad") for path in ("XLA", "shifted", "oneDNN")]
    print(f"{'shape (HxW, C, k, s)':<24}" + "".join(f"{c:>15}" for c in columns))
    for size, channels, k, stride in DEPTHWISE:
        x = jax.random.normal(jax.random.PRNGKey(0), (_BATCH.value, size, size, channels))
        w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 1, channels))
        pad = ((k // 2, k // 2),) * 2
        xla = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pad, feature_group_count=channels,
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ours = lambda x, w: ops.conv2d(x, w, stride=stride, padding=k // 2, groups=channels)
        grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
        with mock.patch.object(onednn, "available", lambda: False):  # traced here, so the shifted path is kept
            shifted, shifted_grad = jax.jit(ours).lower(x, w).compile(), grad(ours).lower(x, w).compile()
        for fn in (shifted, jax.jit(ours)):
            np.testing.assert_allclose(jax.jit(xla)(x, w), fn(x, w), rtol=1e-3, atol=1e-3)
        row = [milliseconds(fn, x, w) for fn in (jax.jit(xla), shifted, jax.jit(ours),
                                                 grad(xla), shifted_grad, grad(ours))]
        print(f"{f'{size}x{size}, {channels}, {k}, {stride}':<24}" + "".join(f"{v:>15.1f}" for v in row))


if __name__ == "__main__":
    app.run(main)
