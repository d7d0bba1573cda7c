"""Dropout whose mask is Flax's ``nn.Dropout`` mask bit for bit, drawn in one fused pass.

``jax.random.bernoulli`` hashes a counter per element with Threefry-2x32, and on the CPU JAX lowers that hash as a
5-iteration loop, each iteration a pass over the whole mask: 2-3 ms of simple_cnn's 21 ms training step at batch
128, running beside (and slowing) the first convolution. Here the same hash is written out, its 20 rounds
unrolled into elementwise integer ops that XLA fuses with the comparison and the select into one loop. The key,
the counters (each element's row-major index) and the bits-to-uniform conversion are JAX's for a threefry key
under ``jax_threefry_partitionable`` (the default), so the masks, and every result trained with them, are the ones
``nn.Dropout`` gives; other key implementations fall back to ``jax.random.bernoulli``.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    """``jax.random.bernoulli(key, p, shape)`` for a threefry key, from the unrolled hash."""
    size = math.prod(shape)
    if (str(jax.random.key_impl(key)) != "threefry2x32" or not jax.config.jax_threefry_partitionable
            or size >= 2 ** 32):
        return jax.random.bernoulli(key, p, shape)
    counters = lax.iota(np.uint32, size).reshape(shape)  # the low words; the high words are 0 below 2**32
    bits1, bits2 = threefry2x32(jax.random.key_data(key), jnp.zeros_like(counters), counters)
    mantissa = lax.shift_right_logical(bits1 ^ bits2, np.uint32(32 - 23)) | np.float32(1.0).view(np.uint32)
    return lax.bitcast_convert_type(mantissa, np.float32) - np.float32(1.0) < np.float32(p)


class Dropout(nn.Module):
    """``nn.Dropout`` (same fields, same rng stream, same masks) with the mask drawn by ``bernoulli`` above."""
    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        rng = self.make_rng(self.rng_collection) if rng is None else rng
        if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.wrap_key_data(rng)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(bernoulli(rng, keep_prob, shape), inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
