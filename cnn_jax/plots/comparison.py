"""The figure of a model comparison (``experiments/compare.py``): what each arm's accuracy costs.

Two panels, one point per arm, labelled by name: test accuracy against parameter count (size) and
against training throughput (speed), both on log axes since arms differ by orders of magnitude.
"""
from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator

from cnn_jax.plots.figure import PathLike, save_figure

REQUIRED_KEYS = ("arm", "params", "test_accuracy", "train_images_per_sec")
_PANELS = (("params", "parameters"), ("train_images_per_sec", "training throughput (images/s)"))


def plot_comparison(rows: Sequence[Mapping], path: PathLike, title: str = "") -> pathlib.Path:
    """Test accuracy against parameters and against train images/s, one labelled point per row.

    ``rows`` are the arms of a comparison, each with at least the keys in ``REQUIRED_KEYS``;
    parameters and throughput must be positive (they go on log axes).
    """
    if not rows:
        raise ValueError("plot_comparison needs at least one row (an arm with its results)")
    for row in rows:
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"comparison row {dict(row)} lacks {missing}; each row needs {REQUIRED_KEYS}")
        for key, _ in _PANELS:
            if not row[key] > 0:
                raise ValueError(f"arm {row['arm']!r} has {key}={row[key]!r}; it must be positive (log axis)")
    fig = Figure(figsize=(11, 4.5))
    for ax, (key, label) in zip(fig.subplots(1, 2, sharey=True), _PANELS):
        for row in rows:
            ax.scatter(row[key], row["test_accuracy"], color="tab:blue")
            ax.annotate(row["arm"], (row[key], row["test_accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set(xscale="log", xlabel=label, title=f"test accuracy vs {label.split(' (')[0]}")
        ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))  # labels at 1, 2, 5 x 10^k: enough within a decade
        for axis_ticks in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_ticks(EngFormatter(sep=""))  # 20k, 100k, 1M
        ax.grid(alpha=0.3, which="both")
        ax.margins(0.15)  # room for the labels of the outermost points
    fig.axes[0].set_ylabel("test accuracy")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
