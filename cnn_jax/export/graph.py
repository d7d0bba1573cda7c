"""A model's forward pass as a flat list of JAX primitives, the input of the ONNX and TFLite lowerings.

``trace`` runs ``jax.make_jaxpr`` on ``model.apply(variables, images)`` in kernel mode "portable" (``portable()``:
standard JAX ops only, no oneDNN custom call and no ``platform_dependent`` branch), then

- inlines the call-like primitives (``jit``, ``custom_jvp_call``, ``custom_vjp_call``): inference needs only
  their primal computation;
- folds every equation whose inputs are all constants (the variables, normalization statistics, BatchNorm's
  scale and shift, iotas) by evaluating it with JAX at export time, so the lowerings see weights as plain numpy
  arrays and need to express only what depends on the images.

The batch is traced as ``BATCH``, a prime no layer of the zoo has as a size, rather than as a JAX symbolic
dimension: with static shapes ``jnp`` indexing lowers to ``lax.slice`` instead of ``gather``. A lowering maps
every size equal to ``BATCH`` back to a dynamic batch (``dims``), and a size that is a multiple of it (a
reshape that folds the batch into another axis) is refused as unsupported.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from cnn_jax import ops
from cnn_jax.export.meta import ExportError

BATCH = 7919
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "closed_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


class UnsupportedOpError(ExportError):
    """A primitive (or a use of one) that a portable format cannot express."""

    def __init__(self, primitive: str, fmt: str, detail: str = "", suggest: str = "stablehlo or saved_model"):
        self.primitive, self.format = primitive, fmt
        super().__init__(f"{fmt} cannot express the JAX primitive {primitive!r}{f' ({detail})' if detail else ''}; "
                         f"export to {suggest} instead (stablehlo and saved_model keep every JAX primitive)")


class Value:
    """A value the images flow into, one per equation output (inlined jaxprs reuse their ``Var`` objects)."""

    def __init__(self, aval):
        self.aval = aval


@dataclasses.dataclass
class Equation:
    """One primitive application: ``outputs = primitive(*inputs, **params)``; inputs are ``Value`` or numpy."""
    primitive: str
    inputs: list
    outputs: list
    params: dict


@dataclasses.dataclass
class Graph:
    """Images ``input`` (BATCH, H, W, C) float32 to ``output`` logits, through ``equations`` in order."""
    input: Any
    output: Any
    equations: list


def shape(value) -> tuple:
    return tuple(np.shape(value)) if isinstance(value, np.ndarray) else tuple(value.aval.shape)


def dims(sizes: Sequence[int], fmt: str, batch=-1) -> list:
    """``sizes`` with the traced batch replaced by ``batch``; a size that is a multiple of it is refused."""
    out = []
    for size in sizes:
        if size == BATCH:
            out.append(batch)
        elif size % BATCH == 0 and size:
            raise UnsupportedOpError("reshape", fmt, "an axis that folds the batch into another axis")
        else:
            out.append(int(size))
    return out


def _evaluate(primitive, params, values):
    out = primitive.bind(*values, **params)
    return [np.asarray(v) for v in (out if primitive.multiple_results else [out])]


def read_in(env: dict, atom):
    return np.asarray(atom.val, atom.aval.dtype) if isinstance(atom, core.Literal) else env[atom]


def _flatten(jaxpr: core.Jaxpr, env: dict, equations: list) -> None:
    def read(atom):
        return read_in(env, atom)

    for eqn in jaxpr.eqns:
        inputs = [read(a) for a in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS:
            closed = eqn.params[_CALLS[name]]
            inner, consts = (closed.jaxpr, closed.consts) if hasattr(closed, "jaxpr") else (closed, ())
            inner_env = {v: np.asarray(c) for v, c in zip(inner.constvars, consts)}
            inner_env.update(zip(inner.invars, inputs[len(inputs) - len(inner.invars):]))
            _flatten(inner, inner_env, equations)
            env.update(zip(eqn.outvars, [read_in(inner_env, v) for v in inner.outvars]))
            continue
        static = all(BATCH not in v.aval.shape for v in eqn.outvars)
        if static and all(isinstance(x, np.ndarray) for x in inputs):
            env.update(zip(eqn.outvars, _evaluate(eqn.primitive, eqn.params, inputs)))
            continue
        outputs = [Value(v.aval) for v in eqn.outvars]
        equations.append(Equation(name, inputs, outputs, dict(eqn.params)))
        env.update(zip(eqn.outvars, outputs))


def portable():
    """The kernel mode of every export, set here alone: "portable", standard JAX ops that any backend and any
    format runs."""
    return ops.kernels("portable")


def trace(model, variables, image_shape: Sequence[int]) -> Graph:
    """The inference graph of ``model.apply(variables, images)`` for float32 images of ``image_shape``."""
    variables = jax.tree.map(np.asarray, variables)
    return trace_function(lambda images: model.apply(variables, images), image_shape)


def trace_function(function, image_shape: Sequence[int]) -> Graph:
    """The graph of ``function``: float32 [batch, *image_shape] to one array, whatever it closes over folded."""
    with portable():
        closed = jax.make_jaxpr(function)(jax.ShapeDtypeStruct((BATCH, *image_shape), jnp.float32))
    jaxpr = closed.jaxpr
    env = {v: np.asarray(c) for v, c in zip(jaxpr.constvars, closed.consts)}
    (images,) = [Value(v.aval) for v in jaxpr.invars]
    env[jaxpr.invars[0]] = images
    equations = []
    _flatten(jaxpr, env, equations)
    (output,) = jaxpr.outvars
    return Graph(images, env[output], equations)
