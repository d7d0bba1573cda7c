"""Attribution and feature visualization: what a trained network looks at, and what its units respond to.

Gradient methods take ``f`` (images (N, H, W, C) -> logits (N, K)), the images and one target class per image,
and return maps shaped like the images: ``saliency``, ``gradient_x_input``, ``smoothgrad`` (over any method),
``integrated_gradients``, ``blur_ig`` and ``guided_ig`` (integrated gradients along a blur path and a
gradient-guided path), ``guided_backprop`` (guided ReLUs swapped into ``f``) and ``occlusion``. ``grad_cam`` and
``activation_maximization`` (with ``top_examples``, the natural images that excite the same unit) look inside the
network: they take the model, its variables and a layer name, either a sown name ("features", "stage2") or a module
path ("stage2_block0/conv1/conv"); see ``taps``. Every method is jittable and works on a whole batch; ``methods``
names them for ``sanity`` checks and ``faithfulness`` scores.
"""
from cnn_jax.interpret.activation_maximization import (
    Objective,
    Visualization,
    activation_maximization,
    channel,
    class_logit,
    neuron,
)
from cnn_jax.interpret.blur_ig import blur_ig
from cnn_jax.interpret.dataset_examples import Examples, top_examples
from cnn_jax.interpret.grad_cam import grad_cam
from cnn_jax.interpret.guided_backprop import guided_backprop
from cnn_jax.interpret.guided_ig import guided_ig
from cnn_jax.interpret.integrated_gradients import integrated_gradients
from cnn_jax.interpret.occlusion import occlusion
from cnn_jax.interpret.saliency import gradient_x_input, saliency
from cnn_jax.interpret.smoothgrad import smoothgrad
from cnn_jax.interpret.taps import conv_layers, sown_layers, tap

__all__ = [
    "Examples", "Objective", "Visualization", "activation_maximization", "blur_ig", "channel", "class_logit",
    "conv_layers", "grad_cam", "gradient_x_input", "guided_backprop", "guided_ig", "integrated_gradients", "neuron",
    "occlusion", "saliency", "smoothgrad", "sown_layers", "tap", "top_examples",
]
