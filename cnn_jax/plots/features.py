"""Figure of feature visualization beside dataset examples (Olah et al. 2017, Distill): one row per unit, its
optimized images, then the natural images that excite it most, each titled by the unit's value on it."""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from cnn_jax.plots.figure import PANEL_INCHES, PathLike, check_images, save_figure, show_image


def plot_feature_examples(optimized, optimized_values, examples, example_values, row_titles: Sequence[str],
                          path: PathLike, title: str = "") -> pathlib.Path:
    """``optimized`` (units, copies, H, W, C) in [0, 1] with their values (units, copies), then ``examples``
    (units, k, H, W, C) with theirs (units, k; -inf where fewer images were seen, left blank), one row per unit
    headed by ``row_titles``."""
    optimized, examples = np.asarray(optimized, np.float32), np.asarray(examples, np.float32)
    if optimized.ndim != 5 or examples.ndim != 5 or not len(optimized) == len(examples) == len(row_titles):
        raise ValueError(f"one row per unit: optimized (units, copies, H, W, C) {optimized.shape}, examples "
                         f"(units, k, H, W, C) {examples.shape} and {len(row_titles)} row titles")
    units, copies, k = len(optimized), optimized.shape[1], examples.shape[1]
    check_images(optimized[0], "optimized images")
    check_images(examples[0], "dataset examples")
    columns = copies + 1 + k  # a blank column between the two groups
    fig = Figure(figsize=(PANEL_INCHES * 0.75 * columns, PANEL_INCHES * 0.8 * units + 0.6))
    axes = np.asarray(fig.subplots(units, columns, squeeze=False))
    for row in range(units):
        for col in range(columns):
            axes[row, col].set_axis_off()
        for c in range(copies):
            show_image(axes[row, c], optimized[row, c])
            label = f"{row_titles[row]}\n" if c == 0 else ""
            axes[row, c].set_title(f"{label}{float(optimized_values[row][c]):.2f}", fontsize=7)
        for j in range(k):
            if np.isfinite(example_values[row][j]):
                show_image(axes[row, copies + 1 + j], examples[row, j])
                axes[row, copies + 1 + j].set_title(f"{float(example_values[row][j]):.2f}", fontsize=7)
    axes[0, 0].text(0, 1.45, "optimized (objective value)", transform=axes[0, 0].transAxes, fontsize=8)
    axes[0, copies + 1].text(0, 1.45, "dataset examples (value)", transform=axes[0, copies + 1].transAxes,
                             fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
