"""Figures of attribution and feature visualization: attribution overlays, filters, feature maps, image grids.

Inputs are numpy-convertible arrays; images are (H, W, C) in [0, 1] with 1 or 3 channels.
"""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from cnn_jax.plots.figure import PANEL_INCHES, PathLike, check_images, save_figure, show_image

_HEAT_CMAP = "inferno"
def attribution_heatmap(attribution, percentile: float = 99.0) -> np.ndarray:
    """An (H, W, C) or (H, W) attribution as an (H, W) map in [0, 1]: absolute values summed over channels,
    divided by their ``percentile`` (PAIR-code saliency's ``VisualizeImageGrayscale``, without the offset)."""
    heat = np.abs(np.asarray(attribution, np.float32))
    if heat.ndim == 3:
        heat = heat.sum(axis=-1)
    if heat.ndim != 2:
        raise ValueError(f"an attribution map is (H, W) or (H, W, C), got shape {heat.shape}")
    top = np.percentile(heat, percentile)
    return np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)


def plot_attributions(images, attributions: Mapping[str, object], path: PathLike,
                      titles: Optional[Sequence[str]] = None, percentile: float = 99.0) -> pathlib.Path:
    """One row per image: the image, then each method's heat map over a gray copy of it (opaque where the
    attribution is strong). ``attributions`` maps a method name to its maps, (N, H, W, C) or (N, H, W);
    ``titles`` (one per image, e.g. the prediction) head the image column."""
    images = check_images(images)
    n = len(images)
    for name, maps in attributions.items():
        if np.shape(maps)[:3] != images.shape[:3]:
            raise ValueError(f"{name} maps have shape {np.shape(maps)}, not that of the images {images.shape[:3]}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    columns = 1 + len(attributions)
    fig = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * n + 0.3))
    axes = np.asarray(fig.subplots(n, columns, squeeze=False))
    gray = images.mean(axis=-1)
    for i in range(n):
        show_image(axes[i, 0], images[i])
        if titles is not None:
            axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, maps) in enumerate(attributions.items(), start=1):
            heat = attribution_heatmap(np.asarray(maps[i]), percentile)
            axes[i, j].imshow(gray[i], cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(heat, cmap=_HEAT_CMAP, vmin=0, vmax=1, alpha=0.25 + 0.75 * heat)
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    return save_figure(fig, path)


def _normalize(x: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant array becomes 0.5)."""
    low, high = x.min(), x.max()
    return np.full_like(x, 0.5) if high == low else (x - low) / (high - low)


def _grid(count: int, cols: Optional[int] = None):
    cols = cols or math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def plot_filters(kernel, path: PathLike, max_filters: int = 64, title: str = "first-layer filters") -> pathlib.Path:
    """The filters of a conv kernel (kh, kw, C_in, C_out), each scaled to [0, 1] on its own: in colour when the
    layer reads RGB, else the mean over its input channels in gray."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4:
        raise ValueError(f"a conv kernel is (kh, kw, C_in, C_out), got shape {kernel.shape}")
    count = min(kernel.shape[-1], max_filters)
    rows, cols = _grid(count)
    fig = Figure(figsize=(0.8 * cols + 0.4, 0.8 * rows + 0.5))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k < count:
            tile = kernel[..., k] if kernel.shape[2] == 3 else kernel[..., k].mean(axis=-1, keepdims=True)
            show_image(ax, _normalize(tile))
    fig.suptitle(f"{title} ({kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}, {count} of {kernel.shape[3]})")
    return save_figure(fig, path)


def plot_feature_maps(feature_maps: Mapping[str, object], path: PathLike, max_channels: int = 8,
                      image=None) -> pathlib.Path:
    """One row per layer of one image's feature maps (h, w, C): its ``max_channels`` most active channels (by mean
    activation), each scaled on its own; ``image`` (H, W, C), when given, starts the figure."""
    if not feature_maps:
        raise ValueError("plot_feature_maps needs at least one layer")
    maps = {name: np.asarray(value, np.float32) for name, value in feature_maps.items()}
    for name, value in maps.items():
        if value.ndim != 3:
            raise ValueError(f"feature maps of one image are (h, w, C); {name} has shape {value.shape}")
    rows = len(maps) + (image is not None)
    fig = Figure(figsize=(PANEL_INCHES * max_channels * 0.7 + 1.2, PANEL_INCHES * 0.8 * rows + 0.3))
    axes = np.asarray(fig.subplots(rows, max_channels, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    if image is not None:
        show_image(axes[0, 0], np.asarray(image, np.float32))
        axes[0, 0].set_title("input", fontsize=8)
    for row, (name, value) in enumerate(maps.items(), start=rows - len(maps)):
        strongest = np.argsort(-value.mean(axis=(0, 1)))[:max_channels]
        for col, channel in enumerate(strongest):
            axes[row, col].imshow(_normalize(value[..., channel]), cmap="viridis", vmin=0, vmax=1)
            axes[row, col].set_title(f"{name} [{channel}]" if col == 0 else f"[{channel}]", fontsize=7)
    return save_figure(fig, path)


def plot_image_grid(images, path: PathLike, titles: Optional[Sequence[str]] = None, cols: Optional[int] = None,
                    title: Optional[str] = None) -> pathlib.Path:
    """Images (N, H, W, C) in [0, 1] in a grid, e.g. activation-maximization images titled by class or channel."""
    images = check_images(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    rows, cols = _grid(len(images), cols)
    fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows + (0.4 if title else 0.1)))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k < len(images):
            show_image(ax, images[k])
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
