"""airbench94's way of training its network (Keller Jordan, 2024), as an engine start (a ``FineTuning``).

Two things differ from the engine's ordinary optimizer, each a field:
- ``whitened``: the stem's kernel is set to the whitening of the training patches and never trains
  (zero updates); its bias trains like every other parameter.
- ``norm_bias_scale``: BatchNorm offsets (``bias`` leaves of a BatchNorm) train at this multiple of the
  learning rate, their weight decay divided by it so that the decay per step stays that of the others
  (airbench94: 64, with BatchNorm scales removed); and every trained parameter decays, biases and the
  head included, as in airbench94's PyTorch SGD, not only the kernels.
The schedule, momentum, Nesterov and the update rules (clipping, lookahead, accumulation) are the config's.
"""
from __future__ import annotations

import dataclasses

import jax
import optax

from cnn_jax.train.config import TrainConfig
from cnn_jax.train.finetune import FROZEN, HEAD, FineTuning
from cnn_jax.train.optim import update_schedule, with_update_rules

STEM = "stem"
NORM_BIAS = "norm_bias"


def is_norm_bias(path) -> bool:
    """Whether the parameter at ``path`` (tree keys) is a BatchNorm offset: a ``bias`` inside a module named
    ``bn`` or ``..._bn<k>``, as the zoo names them."""
    names = [getattr(key, "key", None) for key in path]
    return len(names) >= 2 and names[-1] == "bias" and "bn" in str(names[-2]).split("_")[-1]


@dataclasses.dataclass(frozen=True)
class AirbenchStart(FineTuning):
    """Starts from ``variables`` (the whitened stem kernel, if any) and trains with airbench94's groups.

    Attributes:
      whitened: the stem's kernel is frozen (it holds the whitening transform).
      norm_bias_scale: learning-rate multiple of the BatchNorm offsets; 1 keeps the engine's optimizer
        (weight decay on kernels only).
    """
    whitened: bool = False
    norm_bias_scale: float = 1.0

    def labels(self, params):
        def label(path, _):
            names = [getattr(key, "key", None) for key in path]
            if self.whitened and names[0] == STEM and names[-1] == "kernel":
                return FROZEN
            return NORM_BIAS if self.norm_bias_scale != 1 and is_norm_bias(path) else HEAD
        return jax.tree_util.tree_map_with_path(label, params)

    def optimizer(self, config: TrainConfig, steps_per_epoch: int):
        if self.norm_bias_scale == 1:
            return super().optimizer(config, steps_per_epoch)
        if config.optimizer not in ("sgd", "nesterov"):
            raise ValueError(f"airbench94's parameter groups are for SGD; got optimizer={config.optimizer!r}: "
                             "use --optimizer=nesterov")
        if not self.norm_bias_scale > 0:
            raise ValueError(f"norm_bias_scale={self.norm_bias_scale} must be positive (airbench94: 64)")
        schedule = update_schedule(config, steps_per_epoch)

        def group(scale: float):
            sgd = optax.sgd(lambda step: scale * schedule(step), momentum=config.momentum or None,
                            nesterov=config.optimizer == "nesterov")
            if not config.weight_decay:
                return sgd
            return optax.chain(optax.add_decayed_weights(config.weight_decay / scale), sgd)

        return with_update_rules(config, optax.multi_transform(
            {FROZEN: optax.set_to_zero(), HEAD: group(1.0), NORM_BIAS: group(self.norm_bias_scale)}, self.labels))


__all__ = ["AirbenchStart", "is_norm_bias"]
