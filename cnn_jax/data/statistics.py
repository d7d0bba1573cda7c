"""Per-channel statistics of a dataset's training images: what a network trained from scratch normalizes by."""
from __future__ import annotations

import numpy as np

STATISTICS_IMAGES = 10_000  # enough for the mean and std to 3 decimals on natural images, read in seconds


def channel_statistics(dataset, max_images: int = STATISTICS_IMAGES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and standard deviation, in [0, 1] pixel units, of the first `max_images` training
    images in epoch 0's seeded order (all of them when fewer): the same images for the same seed, on any
    number of processes."""
    count, total, squares = 0, 0.0, 0.0
    for batch in dataset.train_batches(0):
        images = np.asarray(batch["image"][:max_images - count], np.float64)
        pixels = images.reshape(-1, images.shape[-1])
        total, squares = total + pixels.sum(0), squares + np.square(pixels).sum(0)
        count += len(images)
        if count >= max_images:
            break
    pixels_per_channel = count * int(np.prod(dataset.info.image_shape[:2]))
    mean = total / pixels_per_channel
    std = np.sqrt(np.maximum(squares / pixels_per_channel - np.square(mean), 0.0))
    if np.any(std < 1e-3):
        raise ValueError(f"the training images of {dataset.info.name} hardly vary (per-channel std {std.round(4)}): "
                         "check that they are not blank, or pass fixed statistics with --normalization=model")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
