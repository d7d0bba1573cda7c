"""Figures of a training run: learning curves, confusion matrix, per-class accuracy, predictions.

Figures are built as ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never
through pyplot: nothing touches the global backend or the pyplot figure registry, so there is
nothing to close and plotting is safe in headless runs and threads. Each function writes a PNG,
creating parent directories, and returns the path written.
"""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure

from cnn_jax.plots.figure import PathLike, save_figure

_MISTAKE_COLOR, _CORRECT_COLOR = "tab:red", "tab:green"


def _series(records: Sequence[Mapping], x_key: str, key: str):
    points = [(r[x_key], r[key]) for r in records if x_key in r and r.get(key) is not None]
    return tuple(zip(*points)) if points else ((), ())


def plot_training_curves(records: Sequence[Mapping], path: PathLike) -> pathlib.Path:
    """Loss and accuracy panels against epoch (or step when no record has an epoch).

    ``records`` are metric dicts like the lines of ``metrics.jsonl``; every key ending in
    ``loss`` goes to the loss panel and every key ending in ``accuracy`` to the accuracy panel.
    A key may be missing from some records (evaluations are rarer than train logs).
    """
    if not records:
        raise ValueError("plot_training_curves needs at least one metrics record")
    x_key = "epoch" if any("epoch" in r for r in records) else "step"
    if not any(x_key in r for r in records):
        raise ValueError("metrics records have neither 'epoch' nor 'step'; cannot place them on an axis")
    keys = sorted({k for r in records for k in r})
    panels = (("loss", [k for k in keys if k.endswith("loss")]),
              ("accuracy", [k for k in keys if k.endswith("accuracy")]))
    if not any(names for _, names in panels):
        raise ValueError(f"metrics records have no '*loss' or '*accuracy' keys (keys: {keys})")
    fig = Figure(figsize=(11, 4))
    for ax, (title, names) in zip(fig.subplots(1, 2), panels):
        for name in names:
            xs, ys = _series(records, x_key, name)
            ax.plot(xs, ys, marker="o" if len(xs) <= 50 else None, markersize=3, label=name)
        ax.set(title=title, xlabel=x_key, ylabel=title)
        ax.grid(alpha=0.3)
        if names:
            ax.legend()
    return save_figure(fig, path)


def plain_text(name: str) -> str:
    """``name`` as matplotlib draws it literally: "$" escaped, so that no class name is read as TeX math."""
    return str(name).replace("$", r"\$")


def _check_class_names(class_names: Sequence[str], n: int, what: str) -> list[str]:
    class_names = [plain_text(name) for name in class_names]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names given for {n} classes in the {what}")
    return class_names


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: PathLike,
                          normalize: bool = True) -> pathlib.Path:
    """Heat map of a (true x predicted) confusion matrix; ``normalize`` shows each row as fractions."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {confusion.shape}")
    n = confusion.shape[0]
    names = _check_class_names(class_names, n, "confusion matrix")
    values = confusion.astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (" (row-normalized)" if normalize else ""))
    if n <= 20:
        threshold = values.max() / 2
        for i, j in np.ndindex(n, n):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(confusion[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] > threshold else "black")
    return save_figure(fig, path)


def plot_per_class_accuracy(per_class: Union[Mapping[str, float], Sequence[float]],
                            class_names: Optional[Sequence[str]], path: PathLike) -> pathlib.Path:
    """Horizontal bars of each class's accuracy, with the mean over classes as a dashed line.

    ``per_class`` is a sequence aligned with ``class_names`` or a dict by class name (then
    ``class_names`` may be None, or orders the bars). NaN (a class with no examples) is drawn empty.
    """
    if isinstance(per_class, Mapping):
        names = list(per_class) if class_names is None else list(class_names)
        missing = [name for name in names if name not in per_class]
        if missing:
            raise ValueError(f"per_class has no value for class(es) {missing}")
        values = np.array([per_class[name] for name in names], np.float64)
    else:
        values = np.asarray(per_class, np.float64)
        if class_names is None:
            raise ValueError("class_names is required when per_class is a sequence")
        names = _check_class_names(class_names, len(values), "per-class accuracies")
    fig = Figure(figsize=(7, max(2.5, 0.3 * len(names) + 1)))
    ax = fig.subplots()
    positions = np.arange(len(names))
    bars = ax.barh(positions, np.nan_to_num(values), color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in values], padding=2, fontsize=8)
    ax.set_yticks(positions, names)
    ax.invert_yaxis()
    mean = np.nanmean(values)
    ax.axvline(mean, color="tab:orange", linestyle="--")
    ax.set(xlim=(0, 1.1), xlabel="accuracy", title=f"per-class accuracy (dashed: mean over classes, {mean:.3f})")
    return save_figure(fig, path)


def plot_prediction_grid(images, labels, predictions, class_names: Sequence[str], path: PathLike,
                         max_images: int = 36) -> pathlib.Path:
    """A grid of the first ``max_images`` images titled by prediction; mistakes in red as "pred (true)".

    ``images`` are NHWC in [0, 1]; single-channel images are drawn in gray.
    """
    images, labels, predictions = np.asarray(images), np.asarray(labels), np.asarray(predictions)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
    if not len(images) == len(labels) == len(predictions):
        raise ValueError(f"got {len(images)} images, {len(labels)} labels and {len(predictions)} predictions")
    if max_images < 1 or len(images) == 0:
        raise ValueError(f"nothing to draw: {len(images)} images with max_images={max_images}")
    count = min(len(images), max_images)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= count:
            continue
        image = np.clip(images[i], 0, 1)
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image)
        pred, true = (plain_text(class_names[int(k)]) for k in (predictions[i], labels[i]))
        wrong = predictions[i] != labels[i]
        ax.set_title(f"{pred} ({true})" if wrong else pred, fontsize=8,
                     color=_MISTAKE_COLOR if wrong else _CORRECT_COLOR)
    return save_figure(fig, path)
