"""Figures of the sanity checks (Adebayo et al. 2018, their Figures 2 and 4): the maps of one image as the layers go
random from the top, and the similarity curves of every method along that cascade.

Inputs are a ``cnn_jax.interpret.sanity.SanityResult`` (or anything with its fields) and numpy-convertible arrays.
"""
from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure

from cnn_jax.plots.figure import PANEL_INCHES, PathLike, save_figure, show_image
from cnn_jax.plots.interpret import attribution_heatmap

_METRIC_TITLES = {"spearman": "Spearman rank correlation", "spearman_abs": "Spearman (absolute values)",
                  "ssim": "SSIM"}


def cascade_labels(order) -> list:
    """The x-axis labels: "trained", then each layer randomized in turn (cumulatively)."""
    return ["trained"] + [f"+{layer}" if k else layer for k, layer in enumerate(order)]


def plot_sanity_maps(result, image, path: PathLike, percentile: float = 99.0) -> pathlib.Path:
    """One row per method: ``image`` (H, W, C in [0, 1]), then its map from the trained model and after each
    cascading randomization step, each scaled on its own."""
    labels = cascade_labels(result.order)
    columns = 1 + len(labels)
    fig = Figure(figsize=(PANEL_INCHES * 0.8 * columns, PANEL_INCHES * 0.8 * len(result.methods) + 0.6))
    axes = np.asarray(fig.subplots(len(result.methods), columns, squeeze=False))
    for row, name in enumerate(result.methods):
        maps = np.asarray(result.maps[name])
        if len(maps) != len(labels):
            raise ValueError(f"{name}: {len(maps)} maps for {len(labels)} cascade steps")
        show_image(axes[row, 0], np.asarray(image, np.float32))
        axes[row, 0].set_title(name, fontsize=8)
        for col, (label, heat) in enumerate(zip(labels, maps), start=1):
            axes[row, col].imshow(attribution_heatmap(heat, percentile), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(label, fontsize=8)
    fig.suptitle("maps as the layers are randomized from the top (cascading)")
    return save_figure(fig, path)


def plot_sanity_curves(summary: dict, path: PathLike) -> pathlib.Path:
    """For each metric, the mean similarity to the trained model's maps along the cascade, one line per method,
    with the data-randomization value as a marker at the right when there is one (``summary`` is
    ``cnn_jax.interpret.sanity.summary``'s)."""
    labels = cascade_labels(summary["order"])
    metrics = list(next(iter(summary["cascading"].values())))
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = np.asarray(fig.subplots(1, len(metrics), squeeze=False))[0]
    data = summary.get("data_randomization")
    steps = np.arange(len(labels))
    for ax, metric in zip(axes, metrics):
        for name, row in summary["cascading"].items():
            values = np.array([np.nan if v is None else v for v in row[metric]], np.float64)
            line, = ax.plot(steps, values, marker="o", markersize=3, label=name)
            if data and data[name][metric] is not None:
                ax.plot([len(labels)], [data[name][metric]], marker="*", markersize=9, color=line.get_color())
        ticks = labels + (["shuffled\nlabels"] if data else [])
        ax.set_xticks(np.arange(len(ticks)), ticks, rotation=45, ha="right", fontsize=7)
        ax.axhline(0, color="gray", linewidth=0.5)
        ax.set_ylim(-0.2, 1.05)
        ax.set_title(_METRIC_TITLES.get(metric, metric), fontsize=9)
    axes[0].set_ylabel("similarity to the trained model's maps")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)
