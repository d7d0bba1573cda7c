"""Guided backpropagation (Springenberg et al. 2015): gradients that pass a ReLU backwards only where both the
ReLU's input and the incoming gradient are positive.

The rule is applied to the model's own activations without changing the model: ``with_guided_relus`` traces ``f``
and reruns it (``rewrite.evaluate``) with every ``jax.nn.relu`` and ``jax.nn.relu6`` call swapped for a ReLU whose
custom VJP follows the rule. The forward pass is unchanged; only the backward pass is guided. It traces with
``core.trace``, in the kernel mode where every ReLU is a call it can see.
"""
from __future__ import annotations

import jax

from cnn_jax.interpret import rewrite
from cnn_jax.interpret.core import Array, LogitsFn, check_inputs, input_gradient, trace


def _guided(activation, active):
    """``activation`` with the guided backward rule: gradient * [input is in the active range] * [gradient > 0]."""
    @jax.custom_vjp
    def guided(x):
        return activation(x)

    def forward(x):
        return activation(x), active(x)

    def backward(mask, gradient):
        return (gradient * mask * (gradient > 0),)

    guided.defvjp(forward, backward)
    return guided


guided_relu = _guided(jax.nn.relu, lambda x: x > 0)
guided_relu6 = _guided(jax.nn.relu6, lambda x: (x > 0) & (x < 6))
GUIDED = {"relu": guided_relu, "relu6": guided_relu6}


def with_guided_relus(f: LogitsFn) -> LogitsFn:
    """``f`` with guided ReLUs: the same values, the guided gradients. Raises when ``f`` calls no ReLU."""
    def guided_f(images: Array) -> Array:
        closed = trace(f, images)
        if not set(GUIDED) & set(rewrite.custom_jvp_calls(closed.jaxpr)):
            raise ValueError("guided backpropagation found no jax.nn.relu or jax.nn.relu6 call in the model "
                             "(ReLUs written as jnp.maximum(x, 0), or inside scan/cond/remat, are not seen): it is "
                             "defined for ReLU networks, so leave guided_backprop out of the methods for this one")
        return rewrite.evaluate(closed, [images], replace=GUIDED)[0]
    return guided_f


def guided_backprop(f: LogitsFn, images: Array, targets: Array) -> Array:
    """The guided gradient of ``f(images)[i, targets[i]]`` with respect to the images, shaped like them."""
    targets = check_inputs(images, targets, "guided_backprop")
    return input_gradient(with_guided_relus(f), images, targets)
