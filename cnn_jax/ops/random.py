"""Random masks: ``bernoulli`` equals ``jax.random.bernoulli`` bit for bit, drawn in one fused pass.

``jax.random.bernoulli`` hashes a counter per element with Threefry-2x32, and on the CPU JAX lowers that hash as a
5-iteration loop, each iteration a pass over the whole mask (a dropout layer's mask then runs beside, and slows,
the convolution next to it: BENCHMARKS.md). Here the same hash is written out, its 20 rounds unrolled into
elementwise integer ops that XLA fuses with the comparison and the select into one loop. The key, the counters
(each element's row-major index) and the bits-to-uniform conversion are JAX's for a threefry key under
``jax_threefry_partitionable`` (the default), so the masks, and every result trained with them, are the ones
``jax.random.bernoulli`` gives.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.ops import switch

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: jnp.ndarray, x1: jnp.ndarray, x2: jnp.ndarray) -> tuple:
    """The Threefry-2x32 hash (Salmon et al. 2011, 20 rounds) of the counter pairs ``(x1, x2)`` under the uint32
    pair ``key``, unrolled: elementwise uint32 ops only."""
    k1, k2 = key[0], key[1]
    schedule = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + schedule[0], x2 + schedule[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(rotation)) | lax.shift_right_logical(x2, np.uint32(32 - rotation)))
        x1 = x1 + schedule[(block + 1) % 3]
        x2 = x2 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jnp.ndarray:
    """``jax.random.bernoulli(key, p, shape)``, from the unrolled hash for a threefry key (outside mode
    "portable"); other keys and mode "portable" call ``jax.random.bernoulli`` itself."""
    size = math.prod(shape)
    if (not switch.custom_kernels() or str(jax.random.key_impl(key)) != "threefry2x32"
            or not jax.config.jax_threefry_partitionable or size >= 2 ** 32):
        return jax.random.bernoulli(key, p, shape)
    counters = lax.iota(np.uint32, size).reshape(shape)  # the low words; the high words are 0 below 2**32
    bits1, bits2 = threefry2x32(jax.random.key_data(key), jnp.zeros_like(counters), counters)
    mantissa = lax.shift_right_logical(bits1 ^ bits2, np.uint32(32 - 23)) | np.float32(1.0).view(np.uint32)
    return lax.bitcast_convert_type(mantissa, np.float32) - np.float32(1.0) < np.float32(p)
