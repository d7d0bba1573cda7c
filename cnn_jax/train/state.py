"""The train state: everything that changes during training, as one pytree."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import serialization, struct

from cnn_jax.fused import fused_apply
from cnn_jax.train.lookahead import slow_params


class TrainState(struct.PyTreeNode):
    """Step counter, params, BatchNorm statistics, optimizer state, the base rng and, when on, the
    exponential moving average (EMA) of the weights.

    `rng` holds raw key data (uint32) so that checkpoints store it as a plain array; each step
    derives its randomness by folding the step number into it. `apply_fn`, `tx` and `ema_decay`
    are static. `ema` is None when the EMA is off, and then is left out of the state dict, so that
    checkpoints keep the layout they had before the EMA existed.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema: Optional[dict] = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    @property
    def variables(self) -> dict:
        """The model variables in the form `model.apply` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    @property
    def eval_variables(self) -> dict:
        """The variables to evaluate and export: the EMA when on; else, under lookahead, its slow
        params with the live BatchNorm statistics; else `variables`."""
        if self.ema is not None:
            return self.ema
        slow = slow_params(self.opt_state)
        return self.variables if slow is None else {**self.variables, "params": slow}

    def step_key(self) -> jax.Array:
        """This step's key: the base key folded with the step number."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def with_ema(self, decay: float) -> "TrainState":
        """This state with an EMA of decay `decay` starting at its variables (0: without one)."""
        if not decay:
            return self.replace(ema=None, ema_decay=0.0)
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay={decay}: use a value in (0, 1), e.g. 0.999, or 0 for none")
        copy = jax.tree.map(lambda x: jnp.array(x, copy=True), self.variables)  # no shared buffers
        return self.replace(ema=copy, ema_decay=float(decay))

    def apply_gradients(self, grads, batch_stats) -> "TrainState":
        """One optimizer step; the EMA follows the new variables after every update the optimizer
        applies (under `optax.MultiSteps`, once per accumulated update)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        state = self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                             batch_stats=batch_stats, opt_state=opt_state)
        if self.ema is None:
            return state
        applied = opt_state.mini_step == 0 if isinstance(opt_state, optax.MultiStepsState) else True
        rate = 1 - self.ema_decay
        return state.replace(ema=jax.tree.map(
            lambda average, new: jnp.where(applied, average + rate * (new - average), average),
            self.ema, state.variables))


_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState)
                     if f.metadata.get("pytree_node", True))


def _saved_fields(state: TrainState) -> tuple:
    return tuple(name for name in _DATA_FIELDS if not (name == "ema" and state.ema is None))


def _to_state_dict(state: TrainState) -> dict:
    return {name: serialization.to_state_dict(getattr(state, name)) for name in _saved_fields(state)}


def _from_state_dict(target: TrainState, saved: dict) -> TrainState:
    names = _saved_fields(target)
    if set(saved) != set(names):
        other = "off" if target.ema is not None else "on"
        raise ValueError(f"the saved train state has the fields {sorted(saved)}, the target "
                         f"{sorted(names)}: was it saved with the EMA {other}?")
    return target.replace(**{
        name: serialization.from_state_dict(getattr(target, name), saved[name], name=name)
        for name in names})


# Replaces flax.struct's serialization of TrainState, which would always store an "ema" entry.
serialization.register_serialization_state(TrainState, _to_state_dict, _from_state_dict, override=True)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: Sequence[int], seed: int, sharding=None, *,
                       ema_decay: float = 0.0) -> TrainState:
    """Initializes a model and its optimizer from `seed`, placed with `sharding` (if given).

    `image_shape` is one example's (H, W, C); the model is initialized in eval mode so that
    BatchNorm statistics start at their defaults. `ema_decay` > 0 adds an EMA of the weights
    (`TrainState.with_ema`).
    """
    init_key, state_key = jax.random.split(jax.random.key(seed))
    variables = init_variables(model, tuple(image_shape), init_key)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                       rng=jax.random.key_data(state_key), apply_fn=fused_apply(model),
                       tx=tx).with_ema(ema_decay)
    return state if sharding is None else jax.device_put(state, sharding)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_variables(model: nn.Module, image_shape: tuple, key: jax.Array) -> dict:
    """The model's variables, compiled once per model and image shape."""
    params_key, dropout_key = jax.random.split(key)
    return model.init({"params": params_key, "dropout": dropout_key},
                      jnp.zeros((1, *image_shape), jnp.float32), train=False)
