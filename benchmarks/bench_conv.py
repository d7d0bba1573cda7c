"""Times the CPU convolution lowerings on this machine, per dtype: XLA's convolution, shifted multiply-adds
(depthwise only) and oneDNN.

    python benchmarks/bench_conv.py [--shapes=resnet20,mobilenet] [--dtypes=float32,bfloat16] [--repeats=5]

``ops.conv2d`` runs float32 and bfloat16 convolutions on oneDNN on CPU (bfloat16 where the CPU has bf16 kernels),
and depthwise ones on shifted multiply-adds with several CPU devices. One row per (shape, dtype, path): forward
and forward+backward (input and kernel gradients) milliseconds, the fastest of ``--repeats`` single calls and their
median, and each fastest against float32 oneDNN's on the same shape in the same run ("speedup": float32 oneDNN's
milliseconds over the row's), so that ratios hold on a loaded machine even where absolute times do not. Each path's
forward output is checked against XLA's float32 convolution first.
"""
import dataclasses
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from jax import lax

from cnn_jax import cli, huge_pages, ops
from cnn_jax.ops import onednn

# (size, in channels, out channels, kernel, stride, groups) per shape set.
SHAPES = {
    # resnet20's convolutions at 32x32: each stage's 3x3 and the strided entries of stages 2 and 3.
    "resnet20": [(32, 16, 16, 3, 1, 1), (32, 16, 32, 3, 2, 1), (16, 32, 32, 3, 1, 1), (16, 32, 64, 3, 2, 1),
                 (8, 64, 64, 3, 1, 1)],
    # depthwise layers of MobileNetV2 and EfficientNet-Lite0 at 224x224.
    "mobilenet": [(112, 32, 32, 3, 1, 32), (56, 96, 96, 3, 2, 96), (28, 144, 144, 5, 1, 144),
                  (14, 480, 480, 3, 1, 480), (14, 672, 672, 5, 2, 672)],
}
TOLERANCE = {"float32": 1e-3, "bfloat16": 2e-2}  # of the largest output, against XLA in float32



@dataclasses.dataclass(frozen=True)
class BenchConv:
    """Which convolutions to time, and how often.

    Attributes:
      shapes: shape sets, from resnet20, mobilenet.
      dtypes: compute dtypes: float32, bfloat16.
      batch: images per call for the mobilenet (224x224) shapes.
      batch_cifar: images per call for the resnet20 (32x32) shapes.
      repeats: timed calls per measurement, each timed on its own.
    """
    shapes: tuple[str, ...] = tuple(SHAPES)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    batch: int = 16
    batch_cifar: int = 128
    repeats: int = 10

    def __post_init__(self):
        for name, valid in (("shapes", tuple(SHAPES)), ("dtypes", tuple(TOLERANCE))):
            unknown = [value for value in getattr(self, name) if value not in valid]
            if unknown:
                raise ValueError(f"--{name}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
        for name in ("batch", "batch_cifar", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)}: use at least 1")


def milliseconds(fn, *args, repeats: int) -> tuple:
    """(fastest, median) milliseconds of single calls. Under load the fastest approximates the idle machine:
    oneDNN's multi-threaded kernels wait at barriers for a descheduled thread, which the median shows."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), float(np.median(times))


def paths(x, w, stride, groups):
    """{path: (jitted forward, jitted gradient)} for the lowerings ``ops.conv2d`` can take at these operands."""
    k = w.shape[0]
    pad = ((k // 2, k // 2),) * 2
    def xla(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), pad, feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    def ours(x, w):
        return ops.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)
    def grad(f):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.square(f(x, w).astype(jnp.float32))), (0, 1)))
    found = {"XLA": (jax.jit(xla), grad(xla))}
    if groups > 1 and groups == x.shape[-1] == w.shape[-1]:
        def shifted(x, w):
            return ops.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)  # its own jit cache
        with mock.patch.object(onednn, "available", lambda: False):  # traced here, so the shifted path is kept
            found["shifted"] = (jax.jit(shifted).lower(x, w).compile(), grad(shifted).lower(x, w).compile())
    if "cnn_jax_conv" in jax.jit(ours).lower(x, w).as_text():
        found["oneDNN"] = (jax.jit(ours), grad(ours))
    return found


def main(argv):
    del argv
    try:
        bench = cli.parse(BenchConv())
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    print(f"backend {jax.default_backend()}, batch {bench.batch_cifar} (resnet20 shapes) / {bench.batch} "
          f"(mobilenet shapes), bf16 oneDNN kernels: {onednn.bfloat16_native()}")
    header = ["shape (HxW, Cin>Cout, k, s, g)", "dtype", "path", "fwd ms", "grad ms", "fwd speedup",
              "grad speedup", "fwd median ms", "grad median ms"]
    print(f"{header[0]:<32}{header[1]:<10}{header[2]:<9}" + "".join(f"{h:>19}" for h in header[3:]))
    for shape_set in bench.shapes:
        batch = bench.batch_cifar if shape_set == "resnet20" else bench.batch
        for size, c_in, c_out, k, stride, groups in SHAPES[shape_set]:
            x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, c_in))
            w = jax.random.normal(jax.random.PRNGKey(1), (k, k, c_in // groups, c_out))
            expected = np.asarray(lax.conv_general_dilated(x, w, (stride, stride), ((k // 2, k // 2),) * 2,
                                                           feature_group_count=groups,
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
            rows = {}
            for dtype in bench.dtypes:
                xd, wd = x.astype(dtype), w.astype(dtype)
                for path, (forward, gradient) in paths(xd, wd, stride, groups).items():
                    got = np.asarray(forward(xd, wd).astype(jnp.float32))
                    assert np.abs(got - expected).max() <= TOLERANCE[dtype] * np.abs(expected).max(), (path, dtype)
                    rows[dtype, path] = (milliseconds(forward, xd, wd, repeats=bench.repeats),
                                         milliseconds(gradient, xd, wd, repeats=bench.repeats))
            base = rows.get(("float32", "oneDNN"))
            for (dtype, path), ((fwd, fwd_median), (grad, grad_median)) in rows.items():
                ratios = [f"{b[0] / t:.2f}x" for t, b in zip((fwd, grad), base)] if base else ["-", "-"]
                print(f"{f'{size}x{size}, {c_in}>{c_out}, {k}, {stride}, {groups}':<32}{dtype:<10}{path:<9}" +
                      "".join(f"{v:>19.2f}" for v in (fwd, grad)) + "".join(f"{r:>19}" for r in ratios) +
                      "".join(f"{v:>19.2f}" for v in (fwd_median, grad_median)), flush=True)


if __name__ == "__main__":
    huge_pages.reexec()  # measured as the experiments run: with the huge-page tunable (cnn_jax.huge_pages)
    cli.define_flags(BenchConv())
    app.run(main)
