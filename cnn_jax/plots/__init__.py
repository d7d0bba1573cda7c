"""Matplotlib figures of runs and models (PNG files; no training logic)."""
from cnn_jax.plots.training import (
    plot_confusion_matrix,
    plot_per_class_accuracy,
    plot_prediction_grid,
    plot_training_curves,
)

__all__ = ["plot_confusion_matrix", "plot_per_class_accuracy", "plot_prediction_grid", "plot_training_curves"]
