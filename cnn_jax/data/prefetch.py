"""Host-to-device transfer ahead of the training step, so copies overlap with compute."""
from __future__ import annotations

import collections
from typing import Iterator, Optional

import jax


def prefetch_to_device(batches: Iterator[dict], size: int = 2,
                       sharding: Optional[jax.sharding.Sharding] = None) -> Iterator[dict]:
    """Yields ``batches`` as device arrays while the next ``size`` are already being copied.

    ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) places every array of a batch; None puts
    them on the default device. ``jax.device_put`` is asynchronous, so queued copies run while the
    caller computes on the current batch.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    return _prefetch(batches, size, sharding)


def _prefetch(batches, size, sharding):
    queue = collections.deque()
    for batch in batches:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
