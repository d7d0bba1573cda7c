"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back") as an optax
wrapper around any optimizer.

The inner optimizer moves the (fast) parameters as usual; every `sync_period` updates the slow
weights move `alpha` of the way towards the fast ones and the fast ones restart from them. The
slow weights live in the optimizer state, so checkpoints hold them and a resumed run continues
exactly, and the parameters stay the model's own tree. (`optax.lookahead` keeps the slow weights
in the parameters instead, as `LookaheadParams(fast, slow)`, which every `model.apply`, the
checkpoints and the export would then have to unwrap.)
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


class LookaheadState(NamedTuple):
    """The inner optimizer's state, the slow weights and the number of updates so far."""
    inner_state: optax.OptState
    slow: optax.Params
    count: jax.Array


def lookahead(inner: optax.GradientTransformation, sync_period: int,
              alpha: float) -> optax.GradientTransformation:
    """`inner`, with the slow weights synchronized every `sync_period` updates.

    At a synchronization `slow += alpha * (fast - slow)` and the update returned sets the
    parameters to the new slow weights; between them the update is `inner`'s. The lerp form keeps
    weights that do not move (frozen ones) exactly where they are.
    """
    if sync_period < 1:
        raise ValueError(f"lookahead sync_period={sync_period}: use at least 1 update")
    if not 0 < alpha <= 1:
        raise ValueError(f"lookahead alpha={alpha}: use a value in (0, 1], e.g. 0.5")

    def init(params):
        slow = jax.tree.map(lambda p: jnp.array(p, copy=True), params)  # no buffer shared with params
        return LookaheadState(inner.init(params), slow, jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("lookahead needs the parameters: call update(grads, state, params)")
        inner_updates, inner_state = inner.update(updates, state.inner_state, params)
        count = state.count + 1
        sync = count % sync_period == 0
        fast = optax.apply_updates(params, inner_updates)
        slow = jax.tree.map(lambda s, f: jnp.where(sync, s + alpha * (f - s), s), state.slow, fast)
        updates = jax.tree.map(lambda u, s, p: jnp.where(sync, s - p, u), inner_updates, slow, params)
        return updates, LookaheadState(inner_state, slow, count)

    return optax.GradientTransformation(init, update)


def slow_params(opt_state: optax.OptState) -> Optional[optax.Params]:
    """The slow weights of the lookahead wrapper somewhere in `opt_state`; None without one."""
    found = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda s: isinstance(s, LookaheadState)) if isinstance(s, LookaheadState)]
    return found[0].slow if found else None
