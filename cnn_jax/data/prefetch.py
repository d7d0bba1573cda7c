"""Host-to-device transfer ahead of the training step, so copies overlap with compute.

Each process hands over its own rows of every global batch; the global array is assembled with
``jax.make_array_from_process_local_data``. uint8 images travel as uint8 (a quarter of float32's bytes) and
become float32 in [0, 1] on the devices, with the same division the host would do.
"""
from __future__ import annotations

import collections
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np


def prefetch_to_device(batches: Iterator[dict], size: int = 2,
                       sharding: Optional[jax.sharding.Sharding] = None) -> Iterator[dict]:
    """Yields ``batches`` as device arrays while the next ``size`` are already being copied.

    ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) places every array of a batch: each batch holds this
    process's rows (all of them in a single-process run) and becomes a global array of
    ``jax.process_count()`` times as many rows, along the dimension the sharding splits (the first, or the
    second of a stack of batches under ``P(None, "data")``); None puts them on the default device. uint8
    ``"image"`` arrays arrive as float32 in [0, 1]. Transfers are asynchronous, so queued copies run while the
    caller computes.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    return _prefetch(batches, size, sharding)


@jax.jit
def _to_float(images: jax.Array) -> jax.Array:
    """uint8 to float32 in [0, 1], bit for bit the host's ``np.divide(images, 255)``.

    XLA turns a division by a constant (or a broadcast scalar) into a product with its rounded reciprocal, off
    by one ulp for some levels; a divisor computed elementwise from the data keeps it a true division.
    """
    pixels = images.astype(jnp.float32)
    return pixels / (pixels * 0 + 255)


def _place(batch: dict, sharding) -> dict:
    placed = {}
    for key, value in batch.items():
        if sharding is None:
            placed[key] = jax.device_put(value)
        else:
            value = np.asarray(value)
            shape = list(value.shape)
            shape[_split_dimension(sharding)] *= jax.process_count()
            placed[key] = jax.make_array_from_process_local_data(sharding, value, tuple(shape))
    if "image" in placed and placed["image"].dtype == jnp.uint8:
        placed["image"] = _to_float(placed["image"])
    return placed


def _split_dimension(sharding) -> int:
    """The dimension a NamedSharding splits over devices (the first named in its spec); 0 otherwise."""
    spec = getattr(sharding, "spec", ())
    return next((i for i, name in enumerate(spec) if name is not None), 0)


def _prefetch(batches, size, sharding):
    queue = collections.deque()
    for batch in batches:
        queue.append(_place(batch, sharding))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
