"""The train state: everything that changes during training, as one pytree."""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Step counter, params, BatchNorm statistics, optimizer state and the base rng.

    `rng` holds raw key data (uint32) so that checkpoints store it as a plain array; each step
    derives its randomness by folding the step number into it. `apply_fn` and `tx` are static.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        """The model variables in the form `model.apply` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def step_key(self) -> jax.Array:
        """This step's key: the base key folded with the step number."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def apply_gradients(self, grads, batch_stats) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: Sequence[int], seed: int, sharding=None) -> TrainState:
    """Initializes a model and its optimizer from `seed`, placed with `sharding` (if given).

    `image_shape` is one example's (H, W, C); the model is initialized in eval mode so that
    BatchNorm statistics start at their defaults.
    """
    init_key, state_key = jax.random.split(jax.random.key(seed))
    variables = init_variables(model, tuple(image_shape), init_key)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                       rng=jax.random.key_data(state_key), apply_fn=model.apply, tx=tx)
    return state if sharding is None else jax.device_put(state, sharding)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_variables(model: nn.Module, image_shape: tuple, key: jax.Array) -> dict:
    """The model's variables, compiled once per model and image shape."""
    params_key, dropout_key = jax.random.split(key)
    return model.init({"params": params_key, "dropout": dropout_key},
                      jnp.zeros((1, *image_shape), jnp.float32), train=False)
