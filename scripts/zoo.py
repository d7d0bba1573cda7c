"""Prints the model zoo: each registered model's designed input, parameter count and description.

    python scripts/zoo.py [--num_classes=10] [--models=resnet20,lenet5]

Counts come from ``jax.eval_shape`` (nothing is computed), so the whole table takes seconds.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from absl import app

from cnn_jax import cli, models, ops


@dataclasses.dataclass(frozen=True)
class Listing:
    """What to list.

    Attributes:
      num_classes: classes in each model's head.
      models: models to list (default: all).
    """
    num_classes: int = 10
    models: Optional[tuple[str, ...]] = None


def main(argv):
    del argv
    config = cli.parse(Listing())
    print(f"{'model':<20}{'input':<16}{'params':>14}  description")
    for name in config.models or models.list_models():
        spec = models.model_spec(name)
        model = models.get_model(name, config.num_classes)
        images = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
        shape = "x".join(map(str, spec.input_shape))
        print(f"{name:<20}{shape:<16}{ops.count_params(variables['params']):>14,}  {spec.description}")


if __name__ == "__main__":
    cli.define_flags(Listing())
    app.run(main)
