"""Classification summaries in numpy: the confusion matrix and what follows from it."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class.

    Row sums are the label counts and the diagonal holds the correct predictions.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D of equal length, got {labels.shape} and {predictions.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if not np.issubdtype(values.dtype, np.integer) and values.size:
            raise ValueError(f"{name} must be integer class ids, got dtype {values.dtype}; take argmax of logits first")
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got range [{values.min()}, {values.max()}]")
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class, diagonal / row sum, as float64; NaN for a class with no examples."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {confusion.shape}")
    totals = confusion.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def grid_examples(eval_batches, labels: np.ndarray, predictions: np.ndarray, count: int):
    """Images, labels and predictions of the first mistakes (up to half of `count`), then the first
    correct predictions: a grid of test predictions that shows what goes wrong.

    `eval_batches` yields the split's batches in the order of `labels` (with a "mask" of real
    examples); images are read only as far as the last one chosen.
    """
    wrong = np.flatnonzero(predictions != labels)[:count // 2]
    right = np.flatnonzero(predictions == labels)[:count - len(wrong)]
    chosen = np.concatenate([wrong, right])
    picked, seen = {}, 0  # only the chosen images are kept: memory stays flat in the split's size
    for batch in eval_batches:
        real = batch["image"][batch["mask"] > 0]
        for i in chosen[(chosen >= seen) & (chosen < seen + len(real))]:
            picked[i] = real[i - seen]
        seen += len(real)
        if seen > chosen.max():
            break
    return np.stack([picked[i] for i in chosen]), labels[chosen], predictions[chosen]
