"""Figures that explain CNNs: `python -m experiments.concepts --workdir=runs/concepts`.

Writes into `<workdir>/figures/`:
  dense_vs_conv_params.png  parameters of a dense layer vs a 3x3 conv layer as the image grows
  edge_filters.png          hand-made edge detectors and their feature maps on a synthetic image
  stride_padding.png        where a 3x3 window lands for each stride and padding, and the output size
  pooling.png               max vs average pooling of the same feature map
  receptive_field.png       receptive-field growth with depth for plain, pooled and dilated stacks
  equivariance.png          a shifted object gives a shifted feature map; a rotated one does not
and the numbers behind them into `<workdir>/concepts.json`. Everything is computed with `cnn_jax.ops`; nothing
is trained, and it runs in seconds on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cnn_jax import cli
from cnn_jax.layers import Conv
from cnn_jax.ops import (
    LayerGeometry,
    avg_pool,
    conv2d,
    conv_output_size,
    count_params,
    max_pool,
    receptive_field,
    same_padding,
)
from cnn_jax.plots.figure import save_figure
from cnn_jax.workdir_files import CONCEPTS_FILE, FIGURES_DIR


@dataclasses.dataclass(frozen=True)
class Concepts:
    """Where the figures go, and the size of their images.

    Attributes:
      workdir: directory for figures/ and concepts.json.
      image_size: side of the synthetic images (pixels).
    """
    workdir: Optional[str] = None
    image_size: int = 48


SIZES = (8, 16, 32, 64, 128, 224)  # image sides for the parameter-count figure
CHANNELS, FEATURES = 3, 16  # an RGB image mapped to 16 feature maps
SOBEL_X = ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))
EDGE_KERNELS = {
    "Sobel x (vertical edges)": SOBEL_X,
    "Sobel y (horizontal edges)": tuple(zip(*SOBEL_X)),
    "diagonal": ((0, 1, 2), (-1, 0, 1), (-2, -1, 0)),
    "Laplacian (blobs, corners)": ((0, 1, 0), (1, -4, 1), (0, 1, 0)),
}


def layer_params(image_size: int) -> dict:
    """Parameters of layers from an RGB image of ``image_size``^2 pixels to 16 maps of the same size: fully
    connected (every output pixel sees every input pixel) and 3x3 convolutional; plus a 128-unit dense layer."""
    image = jax.ShapeDtypeStruct((1, image_size, image_size, CHANNELS), jnp.float32)
    flat = jax.ShapeDtypeStruct((1, image_size * image_size * CHANNELS), jnp.float32)

    def count(module, x):  # shapes only: nothing is allocated or compiled
        return count_params(jax.eval_shape(module.init, jax.random.key(0), x))

    return {
        "dense to 16 maps": count(nn.Dense(image_size * image_size * FEATURES), flat),
        "dense to 128 units": count(nn.Dense(128), flat),
        "3x3 conv to 16 maps": count(Conv(FEATURES, 3), image),
    }


def synthetic_scene(size: int):
    """A gray image (H, W, 1) in [0, 1] with a square, a disk and a triangle on a dark background."""
    y, x = np.mgrid[:size, :size] / size
    scene = np.full((size, size), 0.1, np.float32)
    scene[(abs(y - 0.3) < 0.15) & (abs(x - 0.3) < 0.15)] = 0.9
    scene[(y - 0.7) ** 2 + (x - 0.3) ** 2 < 0.15 ** 2] = 0.6
    scene[(y > 0.55) & (y < 0.9) & (abs(x - 0.72) < (y - 0.55) * 0.6)] = 1.0
    return scene[..., None]


def l_shape(size: int):
    """An asymmetric object (an "L") near the top left of a dark (H, W, 1) image."""
    image = np.zeros((size, size, 1), np.float32)
    top, left, length, width = size // 6, size // 6, size // 3, max(2, size // 12)
    image[top:top + length, left:left + width] = 1.0
    image[top + length - width:top + length, left:left + length * 2 // 3] = 1.0
    return image


def convolve(image, kernel, padding="SAME"):
    """An (H, W, 1) image filtered by one 2-D kernel with ``ops.conv2d``: (H', W')."""
    kernel = jnp.asarray(kernel, jnp.float32)[:, :, None, None]
    return conv2d(jnp.asarray(image)[None], kernel, padding=padding)[0, :, :, 0]


def _figure(rows, cols, size=2.2):
    fig = Figure(figsize=(size * cols, size * rows + 0.4))
    return fig, fig.subplots(rows, cols, squeeze=False)


def _annotate(ax, values, fmt="{:.0f}", cmap="Blues"):
    """A small matrix drawn as cells with their values written in (white on the darker half of a sequential
    colour map)."""
    values = np.asarray(values, np.float32)
    ax.imshow(values, cmap=cmap)
    middle = (values.max() + values.min()) / 2
    for (i, j), value in np.ndenumerate(values):
        dark = cmap != "coolwarm" and value > middle
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([])


def figure_params(path) -> dict:
    counts = {size: layer_params(size) for size in SIZES}
    fig, axes = _figure(1, 1, size=5)
    ax = axes[0, 0]
    for name in counts[SIZES[0]]:
        ax.plot(SIZES, [counts[size][name] for size in SIZES], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="image side (pixels)", ylabel="parameters",
           title="a conv layer's parameters do not grow with the image")
    ax.set_xticks(SIZES, [str(s) for s in SIZES])
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)
    return {str(size): value for size, value in counts.items()}


def figure_edges(path, size: int) -> dict:
    scene = synthetic_scene(size)
    fig, axes = _figure(2, 1 + len(EDGE_KERNELS))
    axes[0, 0].imshow(scene[..., 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=9)
    maps = {name: np.asarray(convolve(scene, kernel)) for name, kernel in EDGE_KERNELS.items()}
    gx, gy = maps["Sobel x (vertical edges)"], maps["Sobel y (horizontal edges)"]
    axes[1, 0].imshow(np.hypot(gx, gy), cmap="magma")
    axes[1, 0].set_title("edge strength\nhypot(Sobel x, Sobel y)", fontsize=8)
    for col, (name, kernel) in enumerate(EDGE_KERNELS.items(), start=1):
        _annotate(axes[0, col], kernel, cmap="coolwarm")
        axes[0, col].set_title(name, fontsize=8)
        span = np.abs(maps[name]).max()
        axes[1, col].imshow(maps[name], cmap="coolwarm", vmin=-span, vmax=span)
        axes[1, col].set_title("feature map", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("3x3 filters respond to edges of one orientation (red: positive, blue: negative)")
    save_figure(fig, path)
    return {name: float(np.abs(value).max()) for name, value in maps.items()}


def figure_stride_padding(path, size: int = 7, kernel: int = 3) -> dict:
    cases = [(stride, padding) for stride in (1, 2) for padding in ("VALID", "SAME")]
    fig, axes = _figure(1, len(cases), size=3)
    sizes = {}
    for ax, (stride, padding) in zip(axes[0], cases):
        lo, hi = same_padding(size, kernel, stride) if padding == "SAME" else (0, 0)
        out = conv_output_size(size, kernel, stride, padding)
        total = size + lo + hi
        ax.add_patch(Rectangle((-0.5, -0.5), total, total, color="0.85"))  # padding zeros
        ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), size, size, facecolor="white", edgecolor="black"))
        for line in np.arange(total + 1) - 0.5:  # pixel boundaries
            ax.axhline(line, color="0.6", linewidth=0.5)
            ax.axvline(line, color="0.6", linewidth=0.5)
        centres = np.arange(out) * stride + (kernel - 1) / 2  # in padded coordinates
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        ax.scatter(xs.ravel(), ys.ravel(), s=40, color="tab:red", zorder=3)
        ax.add_patch(Rectangle((-0.5, -0.5), kernel, kernel, fill=False, edgecolor="tab:blue", linewidth=2))
        ax.set(xlim=(-0.7, total - 0.3), ylim=(total - 0.3, -0.7), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"stride {stride}, {padding}: {size}x{size} -> {out}x{out}", fontsize=9)
        sizes[f"stride {stride} {padding}"] = out
    fig.suptitle(f"a {kernel}x{kernel} window (blue) on a {size}x{size} input (white; gray = zero padding); "
                 "red dots: window centres = output pixels", fontsize=9)
    save_figure(fig, path)
    return sizes


def figure_pooling(path) -> dict:
    values = np.random.default_rng(3).integers(0, 10, (1, 6, 6, 1)).astype(np.float32)
    values[0, 1, 4, 0] = 30  # one strong response: max pooling keeps it, averaging dilutes it
    pooled = {"max pool 2x2": np.asarray(max_pool(values, 2))[0, ..., 0],
              "average pool 2x2": np.asarray(avg_pool(values, 2))[0, ..., 0]}
    fig, axes = _figure(1, 3, size=3)
    _annotate(axes[0, 0], values[0, ..., 0])
    axes[0, 0].set_title("feature map (6x6)", fontsize=9)
    for ax, (name, result) in zip(axes[0, 1:], pooled.items()):
        _annotate(ax, result, fmt="{:.1f}")
        ax.set_title(f"{name} -> 3x3", fontsize=9)
    fig.suptitle("max pooling keeps the strongest response of each window; averaging smooths it")
    save_figure(fig, path)
    return {name: result.tolist() for name, result in pooled.items()}


def receptive_fields(depth: int = 10) -> dict:
    """Receptive-field side after 1..depth layers of four kinds of stacks (``ops.receptive_field``)."""
    stacks = {
        "3x3 convs": lambda i: [LayerGeometry(3, 1, 1)],
        "5x5 convs": lambda i: [LayerGeometry(5, 1, 2)],
        "3x3 conv + 2x2 pool": lambda i: [LayerGeometry(3, 1, 1), LayerGeometry(2, 2)],
        "3x3 dilated 2^i (WaveNet)": lambda i: [LayerGeometry(3, 1, 2 ** i, 2 ** i)],
    }
    fields = {}
    for name, layer in stacks.items():
        layers = []
        fields[name] = []
        for i in range(depth):
            layers += layer(i)
            fields[name].append(receptive_field(layers).size)
    return fields


def figure_receptive_field(path) -> dict:
    fields = receptive_fields()
    fig, axes = _figure(1, 1, size=5)
    ax = axes[0, 0]
    for name, sizes in fields.items():
        ax.plot(range(1, len(sizes) + 1), sizes, marker="o", label=name)
    ax.set(yscale="log", xlabel="depth (layers, or conv+pool pairs)", ylabel="receptive field side (pixels)",
           title="receptive fields grow linearly with plain convs,\nexponentially with pooling or dilation")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)
    return fields


def equivariance(size: int) -> dict:
    """Feature maps of a Sobel filter (circular padding) for an object and its shifted and rotated copies:
    ``conv(T(x))`` against ``T(conv(x))``; the error is zero for shifts and large for a 90-degree rotation."""
    image = l_shape(size)
    shift = (size // 5, size // 4)
    transforms = {
        f"shift by {shift}": lambda a: np.roll(a, shift, axis=(0, 1)),
        "rotate by 90 degrees": lambda a: np.rot90(a, axes=(0, 1)),
    }
    feature = np.asarray(convolve(image, SOBEL_X, padding="CIRCULAR"))
    results = {}
    for name, transform in transforms.items():
        moved = transform(image)
        of_moved = np.asarray(convolve(moved, SOBEL_X, padding="CIRCULAR"))
        moved_map = transform(feature)
        results[name] = {"image": moved, "conv of transformed": of_moved, "transformed conv": moved_map,
                         "error": float(np.abs(of_moved - moved_map).max())}
    return {"image": image, "feature": feature, "cases": results}


def figure_equivariance(path, size: int) -> dict:
    result = equivariance(size)
    fig, axes = _figure(2, 5)
    span = np.abs(result["feature"]).max()
    for row, (name, case) in enumerate(result["cases"].items()):
        panels = [("input", result["image"][..., 0], "gray"), (name, case["image"][..., 0], "gray"),
                  ("conv(transformed)", case["conv of transformed"], "coolwarm"),
                  ("transformed(conv)", case["transformed conv"], "coolwarm"),
                  (f"difference (max {case['error']:.2g})", case["conv of transformed"] - case["transformed conv"],
                   "coolwarm")]
        for ax, (title, value, cmap) in zip(axes[row], panels):
            limits = dict(vmin=0, vmax=1) if cmap == "gray" else dict(vmin=-span, vmax=span)
            ax.imshow(value, cmap=cmap, **limits)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("convolution commutes with shifts (equivariance), not with rotations (Sobel x filter)")
    save_figure(fig, path)
    return {name: case["error"] for name, case in result["cases"].items()}


def write_figures(workdir, image_size: int = 48) -> dict:
    """Writes every figure into ``workdir/figures`` and their numbers into ``workdir/concepts.json``."""
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels to draw the shapes, got {image_size}")
    figures = pathlib.Path(workdir) / FIGURES_DIR
    numbers = {
        "params": figure_params(figures / "dense_vs_conv_params.png"),
        "edge_response": figure_edges(figures / "edge_filters.png", image_size),
        "output_sizes": figure_stride_padding(figures / "stride_padding.png"),
        "pooling": figure_pooling(figures / "pooling.png"),
        "receptive_field": figure_receptive_field(figures / "receptive_field.png"),
        "equivariance_error": figure_equivariance(figures / "equivariance.png", image_size),
    }
    (pathlib.Path(workdir) / CONCEPTS_FILE).write_text(json.dumps(numbers, indent=2))
    return numbers


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = cli.parse(Concepts())
        write_figures(config.workdir, config.image_size)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"figures in {os.path.join(config.workdir, FIGURES_DIR)}")


if __name__ == "__main__":
    cli.define_flags(Concepts(), required=("workdir",))
    app.run(main)
