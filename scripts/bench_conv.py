"""Times convolution lowerings on this machine: XLA's ``lax.conv_general_dilated`` against ``ops.conv2d``.

    python scripts/bench_conv.py [--batch=16] [--repeats=5]

For depthwise shapes (MobileNetV2 / EfficientNet-Lite) ``ops.conv2d`` takes the shifted multiply-add path on CPU;
the table shows forward and forward+backward (input and kernel gradients) milliseconds for both.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from cnn_jax import ops

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
    print(f"{'shape (HxW, C, k, s)':<24}{'XLA fwd':>10}{'ops fwd':>10}{'XLA grad':>10}{'ops grad':>10}")
    for size, channels, k, stride in DEPTHWISE:
        x = jax.random.normal(jax.random.PRNGKey(0), (_BATCH.value, size, size, channels))
        w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 1, channels))
        pad = ((k // 2, k // 2),) * 2
        xla = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pad, feature_group_count=channels,
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ours = lambda x, w: ops.conv2d(x, w, stride=stride, padding=k // 2, groups=channels)
        np.testing.assert_allclose(jax.jit(xla)(x, w), jax.jit(ours)(x, w), rtol=1e-3, atol=1e-3)
        grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
        row = [milliseconds(jax.jit(xla), x, w), milliseconds(jax.jit(ours), x, w),
               milliseconds(grad(xla), x, w), milliseconds(grad(ours), x, w)]
        print(f"{f'{size}x{size}, {channels}, {k}, {stride}':<24}" + "".join(f"{v:>10.1f}" for v in row))


if __name__ == "__main__":
    app.run(main)
