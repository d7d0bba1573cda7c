"""The model zoo: ``get_model(name, num_classes, **kwargs)`` and ``list_models()``.

Every model maps NHWC float images in [0, 1] to logits, normalizes its input itself, and sows named
feature maps into the "intermediates" collection (``"features"`` is the last convolutional map).
"""
from cnn_jax.models import airbench, efficientnet_lite, mlp, mobilenet_v2, resnet, resnet_cifar, small_cnns  # noqa: F401  (registers)
from cnn_jax.models.registry import ModelSpec, get_model, list_models, model_spec, register

__all__ = ["ModelSpec", "get_model", "list_models", "model_spec", "register"]
