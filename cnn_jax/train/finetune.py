"""Fine-tuning a pretrained network: where it starts, which parts train, at which learning rate.

A zoo network is a sequence of top-level submodules (``stem``, ``stage2_block0``, ``block7``,
``head_conv``, ``classifier``, ...) that sows each stage's output ("stage1", "stage2", ...).
``network_stages`` groups the submodules by those outputs: a stage is every submodule called
after the previous stage output and up to its own (the stem belongs to the first); what follows
the last stage output, apart from the classifier, is a last stage of its own (the 1x1 head conv
of MobileNetV2 and EfficientNet). The classifier, the last submodule with parameters, is the
head. Unfreezing N stages trains the last N.

Frozen submodules neither learn nor change:
- their parameters are cut from the gradient (``stop_gradient``), so no backward pass runs
  through a frozen prefix and feature extraction costs little more than inference, and they get
  zero updates (``optax.set_to_zero``: no optimizer state, no weight decay);
- they run in inference mode (``train=False``): their BatchNorm layers normalize with the
  pretrained running statistics and never update them. Keras does the same for frozen layers
  (its transfer-learning guide: a frozen BatchNormalization runs in inference mode), and it keeps
  the features the head learns from identical to those it sees at test time.
Trained backbone submodules run in training mode like any network being trained.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cnn_jax.train.config import TrainConfig
from cnn_jax.train.optim import make_grouped_optimizer
from cnn_jax.train.state import TrainState, init_variables

FROZEN, BACKBONE, HEAD = "frozen", "backbone", "head"


def network_stages(model: nn.Module,
                   image_shape: Sequence[int]) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """(stages, head): the names of the top-level submodules with parameters, grouped into stages
    from input to output, and the head (the last submodule with parameters). Traced abstractly:
    nothing is compiled."""
    calls = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and len(module.path) == 1:
            sown = 0
            while module.parent.has_variable("intermediates", f"stage{sown + 1}"):
                sown += 1
            calls.append((module.path[0], sown))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, mutable=True))
    order = {}
    for name, sown in calls:
        if name in variables.get("params", {}):
            order.setdefault(name, sown)
    if not order:
        raise ValueError(f"{type(model).__name__} has no submodules with parameters to train")
    *body, head = order
    groups: dict[int, list[str]] = {}
    for name in body:
        groups.setdefault(order[name], []).append(name)
    return [tuple(groups[key]) for key in sorted(groups)], (head,)


def _inference_mode(frozen: frozenset) -> Callable:
    """A Flax method interceptor calling the frozen top-level submodules with ``train=False``."""
    def interceptor(next_fun, args, kwargs, context):
        path = context.module.path
        if context.method_name != "__call__" or len(path) != 1 or path[0] not in frozen:
            return next_fun(*args, **kwargs)
        bound = inspect.signature(context.orig_method).bind(*args, **kwargs)
        if "train" in bound.signature.parameters:
            bound.arguments["train"] = False
        return next_fun(*bound.args, **bound.kwargs)
    return interceptor


def frozen_apply(model: nn.Module, frozen: Sequence[str]) -> Callable:
    """``model.apply`` with the top-level submodules ``frozen`` cut from the gradient and in
    inference mode."""
    frozen = frozenset(frozen)
    interceptor = _inference_mode(frozen)

    def apply(variables, *args, **kwargs):
        params = {name: jax.lax.stop_gradient(value) if name in frozen else value
                  for name, value in variables["params"].items()}
        with nn.intercept_methods(interceptor):
            return model.apply({**variables, "params": params}, *args, **kwargs)

    return apply


def overlay(fresh: Mapping, given: Mapping) -> dict:
    """``fresh`` with every leaf that ``given`` has replaced by ``given``'s; raises ValueError
    naming a leaf that ``fresh`` lacks or whose shape differs."""
    fresh_flat = traverse_util.flatten_dict(dict(fresh))
    given_flat = traverse_util.flatten_dict(dict(given))
    for key, value in given_flat.items():
        name = "/".join(key)
        if key not in fresh_flat:
            raise ValueError(f"the starting variables hold {name}, which the model does not have; "
                             "are they for another architecture?")
        if jnp.shape(value) != jnp.shape(fresh_flat[key]):
            raise ValueError(f"the starting variables have {name} of shape {jnp.shape(value)}, "
                             f"the model {jnp.shape(fresh_flat[key])}")
    given_flat = {key: jnp.asarray(value) for key, value in given_flat.items()}
    return traverse_util.unflatten_dict({**fresh_flat, **given_flat})


@functools.partial(jax.jit, static_argnums=(0, 1))
def _start_variables(model: nn.Module, image_shape: tuple, key: jax.Array,
                     given: Mapping) -> dict:
    """Fresh variables overlaid with ``given``, in one compilation: XLA drops the initializers of
    everything ``given`` replaces, so a pretrained backbone's initializers are never compiled."""
    return overlay(init_variables(model, image_shape, key), given)


@dataclasses.dataclass(frozen=True)
class FineTuning:
    """How to adapt a network: the variables it starts from, and how its top-level submodules
    train.

    Attributes:
      variables: ``{"params", "batch_stats"}`` to start from; what they lack (a new head) keeps
        its fresh initialization.
      frozen: submodules that do not train (see the module docstring).
      backbone: submodules trained at ``backbone_learning_rate``.
      backbone_learning_rate: peak rate of ``backbone`` under the config's schedule; None: the
        config's rate.
    The other submodules (the head) train at ``TrainConfig.learning_rate``.
    """
    variables: Any
    frozen: tuple[str, ...] = ()
    backbone: tuple[str, ...] = ()
    backbone_learning_rate: Optional[float] = None

    def labels(self, params: Mapping) -> dict:
        """The optimizer group of each top-level submodule (optax.multi_transform's labels)."""
        unknown = sorted(set(self.frozen + self.backbone) - set(params))
        if unknown:
            raise ValueError(f"no submodules named {unknown} in the model; it has {sorted(params)}")
        return {name: FROZEN if name in self.frozen else BACKBONE if name in self.backbone else HEAD
                for name in params}

    def optimizer(self, config: TrainConfig, steps_per_epoch: int):
        """The optimizer: ``config``'s, per group of ``labels``; frozen submodules get zero updates."""
        rates = {HEAD: config.learning_rate, FROZEN: 0.0,
                 BACKBONE: self.backbone_learning_rate or config.learning_rate}
        return make_grouped_optimizer(config, steps_per_epoch, self.labels, rates)

    def train_state(self, model: nn.Module, config: TrainConfig, steps_per_epoch: int,
                    image_shape: Sequence[int], sharding=None) -> TrainState:
        """The starting train state: fresh variables overlaid with ``variables``, ``optimizer``,
        and an ``apply_fn`` that keeps the frozen submodules frozen."""
        tx = self.optimizer(config, steps_per_epoch)
        init_key, state_key = jax.random.split(jax.random.key(config.seed))  # as create_train_state
        variables = _start_variables(model, tuple(image_shape), init_key, self.variables)
        params = variables["params"]
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                           rng=jax.random.key_data(state_key),
                           apply_fn=frozen_apply(model, self.frozen), tx=tx).with_ema(config.ema_decay)
        return state if sharding is None else jax.device_put(state, sharding)


def fine_tuning(model: nn.Module, image_shape: Sequence[int], variables: Mapping,
                unfreeze: Optional[int], backbone_learning_rate: Optional[float] = None
                ) -> FineTuning:
    """Starts from ``variables`` with a fresh head (their head is dropped: a new task has new
    classes) and trains the head and the backbone's last ``unfreeze`` stages (None: all of them;
    0: feature extraction). To continue from a trained head instead, as the second phase of
    two-phase training does, replace the plan's ``variables`` with the full set.
    """
    stages, head = network_stages(model, image_shape)
    if unfreeze is None:
        unfreeze = len(stages)
    if not 0 <= unfreeze <= len(stages):
        raise ValueError(f"unfreeze={unfreeze}: {type(model).__name__} has {len(stages)} stages; "
                         f"use 0 (feature extraction) to {len(stages)} (all)")
    if backbone_learning_rate is not None and not backbone_learning_rate > 0:
        raise ValueError(f"backbone_learning_rate={backbone_learning_rate} must be positive (a small "
                         "fraction of the head's, e.g. 1e-4)")
    split = len(stages) - unfreeze
    frozen = tuple(name for stage in stages[:split] for name in stage)
    backbone = tuple(name for stage in stages[split:] for name in stage)
    without_head = {collection: {name: value for name, value in tree.items() if name not in head}
                    for collection, tree in variables.items()}
    return FineTuning(without_head, frozen, backbone, backbone_learning_rate)
