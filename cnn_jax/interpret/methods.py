"""Every attribution method by name, with one signature: what sanity checks and faithfulness scores iterate over.

``attribution(name, model)`` returns ``explain(variables, images, targets, rng) -> maps``, maps (N, H, W, C) or,
for Grad-CAM, (N, H, W). The variables are an argument, not a constant, so one jitted ``explain`` serves a model
and all its randomized copies. ``Settings`` holds each method's cost knobs (path steps, noise samples) and the
Grad-CAM layer.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import flax.linen as nn
import jax

from cnn_jax.interpret.blur_ig import blur_ig
from cnn_jax.interpret.core import Array
from cnn_jax.interpret.grad_cam import grad_cam
from cnn_jax.interpret.guided_backprop import guided_backprop
from cnn_jax.interpret.guided_ig import guided_ig
from cnn_jax.interpret.integrated_gradients import integrated_gradients
from cnn_jax.interpret.occlusion import occlusion
from cnn_jax.interpret.saliency import gradient_x_input, saliency
from cnn_jax.interpret.smoothgrad import smoothgrad

Explain = Callable[[Mapping, Array, Array, jax.Array], Array]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Cost knobs of the methods: noisy copies of SmoothGrad, path points of the integrated-gradient methods,
    Blur IG's largest blur, the occlusion window (None: a quarter of the image side), the Grad-CAM layer."""
    smoothgrad_samples: int = 16
    path_steps: int = 32
    max_sigma: float = 8.0
    occlusion_patch: int | None = None
    layer: str = "features"


def _gradient_methods(settings: Settings) -> dict:
    """name -> (f, images, targets, rng) -> maps, for the methods that only need the logits function."""
    steps = settings.path_steps
    return {
        "gradient": lambda f, x, t, rng: saliency(f, x, t),
        "gradient_x_input": lambda f, x, t, rng: gradient_x_input(f, x, t),
        "smoothgrad": lambda f, x, t, rng: smoothgrad(saliency, f, x, t, rng, num_samples=settings.smoothgrad_samples),
        "integrated_gradients": lambda f, x, t, rng: integrated_gradients(f, x, t, steps=steps),
        "blur_ig": lambda f, x, t, rng: blur_ig(f, x, t, steps=steps, max_sigma=settings.max_sigma),
        "guided_ig": lambda f, x, t, rng: guided_ig(f, x, t, steps=steps),
        "guided_backprop": lambda f, x, t, rng: guided_backprop(f, x, t),
        "occlusion": lambda f, x, t, rng: occlusion(
            f, x, t, patch=settings.occlusion_patch or max(1, min(x.shape[1:3]) // 4)),
    }


METHODS = (*_gradient_methods(Settings()), "grad_cam")


def check_methods(names) -> tuple:
    """``names`` as a tuple, each a known method; raises naming an unknown one and listing the known ones."""
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown attribution method {unknown[0] if unknown else '(none given)'!r}: use one or more "
                         f"of {', '.join(METHODS)}")
    return names


def attribution(name: str, model: nn.Module, settings: Settings | None = None) -> Explain:
    """The jitted ``explain(variables, images, targets, rng) -> maps`` of method ``name`` (one of ``METHODS``) on
    ``model`` in inference mode, with ``settings`` (default ``Settings()``)."""
    check_methods(name)
    settings = settings or Settings()
    if name == "grad_cam":
        return jax.jit(lambda variables, x, t, rng: grad_cam(model, variables, x, t, settings.layer))
    method = _gradient_methods(settings)[name]

    @jax.jit
    def explain(variables, images, targets, rng):
        return method(functools.partial(model.apply, variables), images, targets, rng)

    return explain
