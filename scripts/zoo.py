"""Prints the model zoo: each registered model's designed input, parameter count and description.

    python scripts/zoo.py [--num_classes=10] [--models=resnet20,lenet5]

Counts come from ``jax.eval_shape`` (nothing is computed), so the whole table takes seconds.
"""
import jax
import jax.numpy as jnp
from absl import app, flags

from cnn_jax import models, ops

_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes in each model's head.")
_MODELS = flags.DEFINE_list("models", None, "Models to list (default: all).")


def main(argv):
    del argv
    print(f"{'model':<20}{'input':<16}{'params':>14}  description")
    for name in _MODELS.value or models.list_models():
        spec = models.model_spec(name)
        model = models.get_model(name, _NUM_CLASSES.value)
        images = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
        shape = "x".join(map(str, spec.input_shape))
        print(f"{name:<20}{shape:<16}{ops.count_params(variables['params']):>14,}  {spec.description}")


if __name__ == "__main__":
    app.run(main)
