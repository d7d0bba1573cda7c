"""Input normalization inside the model, so every caller feeds the same [0, 1] pixels."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with constants (not parameters): dataset statistics or a pretrained
    backbone's input scaling, e.g. EfficientNet-Lite's ``(255 x - 127) / 128`` is mean 127/255, std 128/255."""
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        if mean.size not in (1, x.shape[-1]) or std.size not in (1, x.shape[-1]):
            raise ValueError(f"normalization has {mean.size} means / {std.size} stds for {x.shape[-1]} channels")
        return (x - mean) / std
