"""Figure of the faithfulness scores (Petsiuk et al. 2018): the mean deletion and insertion curves of every method,
the baselines dashed. Input: ``cnn_jax.interpret.faithfulness.summary``'s dict."""
from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure

from cnn_jax.plots.figure import PathLike, save_figure

_PANELS = (("deletion", "deletion: pixels turned black, most important first (lower is better)"),
           ("insertion", "insertion: pixels restored onto a blurred copy (higher is better)"))


def plot_faithfulness_curves(summary: dict, path: PathLike) -> pathlib.Path:
    """Two panels, deletion and insertion: the mean probability of the explained class against the fraction of
    pixels moved, one line per method (its AUC in the legend), the baselines dashed."""
    table = summary["methods"]
    if not table:
        raise ValueError("plot_faithfulness_curves needs at least one method or baseline")
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (kind, title) in zip(axes, _PANELS, strict=True):
        for name, row in table.items():
            curve = np.asarray(row[f"{kind}_curve"], np.float64)
            dashed = name in summary["baselines"]
            ax.plot(np.linspace(0, 1, len(curve)), curve, linestyle="--" if dashed else "-",
                    linewidth=1.6 if dashed else 1.1, label=f"{name} ({row[f'{kind}_auc']:.3f})")
        ax.set_xlabel("fraction of pixels")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
    axes[0].set_ylabel(f"mean probability of the explained class ({summary['images']} images)")
    fig.tight_layout()
    return save_figure(fig, path)
