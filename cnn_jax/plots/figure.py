"""What every figure module shares: where a figure is saved and how, and how an image panel is drawn."""
from __future__ import annotations

import os
import pathlib
from typing import Union

import numpy as np
from matplotlib.figure import Figure

PathLike = Union[str, os.PathLike]
DPI = 120
PANEL_INCHES = 1.8  # the side of one image panel


def save_figure(fig: Figure, path: PathLike) -> pathlib.Path:
    """Saves ``fig`` as ``path`` (its directory made), tightly cropped at ``DPI``; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def check_images(images, what: str = "images") -> np.ndarray:
    """``images`` as float32 (N, H, W, C) with 1 or 3 channels; ValueError naming ``what`` otherwise."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must be (N, H, W, C) with 1 or 3 channels, got shape {images.shape}")
    return images


def show_image(ax, image: np.ndarray) -> None:
    """An (H, W, 1 | 3) image in [0, 1] on ``ax``, without axes."""
    image = np.clip(image, 0, 1)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_axis_off()
