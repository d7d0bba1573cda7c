"""Re-running a traced program with changes: the mechanism behind Grad-CAM and guided backpropagation.

``jax.make_jaxpr`` turns a forward pass into a list of equations. ``evaluate`` runs that list like
``jax.core.eval_jaxpr`` does (so jit, grad and vmap apply to the result), with two kinds of change:

* ``add``: a value added to chosen variables right after they are computed, so every later use sees it. The
  gradient with respect to a zero addition is the gradient with respect to that intermediate, whatever module or
  plain function computed it, and the forward pass is unchanged. (Flax's ``Module.perturb`` does this from inside a
  model; this needs no cooperation from the model.)
* ``replace``: calls of ``jax.custom_jvp`` functions named here (``jax.nn.relu`` and ``jax.nn.relu6`` are such
  functions) run a replacement, e.g. one with a custom VJP. Calls inside ``jax.jit``-ed functions are replaced too;
  calls inside other higher-order primitives (scan, cond, while, remat, custom_vjp) keep their own definition.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Optional, Sequence

from jax.extend import core as jcore

_JIT = jcore.primitives.jit_p
_CUSTOM_JVP = jcore.primitives.custom_jvp_call_p


def _custom_jvp_name(eqn) -> Optional[str]:
    """The function name of a ``jax.custom_jvp`` call (``"relu"`` for ``jax.nn.relu``), else None."""
    if eqn.primitive is not _CUSTOM_JVP:
        return None
    return eqn.params["call_jaxpr"].jaxpr.debug_info.func_name


def custom_jvp_calls(jaxpr: jcore.Jaxpr) -> Iterator[str]:
    """The names of the ``jax.custom_jvp`` calls ``evaluate`` can replace: those of ``jaxpr`` and its jit calls."""
    for eqn in jaxpr.eqns:
        name = _custom_jvp_name(eqn)
        if name is not None:
            yield name
        elif eqn.primitive is _JIT:
            yield from custom_jvp_calls(eqn.params["jaxpr"].jaxpr)


def evaluate(closed: jcore.ClosedJaxpr, args: Sequence, *, add: Optional[Mapping[jcore.Var, object]] = None,
             replace: Optional[Mapping[str, Callable]] = None) -> list:
    """The outputs of ``closed`` on the flat ``args``, with ``add[v]`` added to variable ``v`` where it is defined
    (an input or an equation's output of the top-level program) and ``replace[name]`` run instead of the
    ``jax.custom_jvp`` function ``name``. Raises when a variable of ``add`` is not defined there (a constant)."""
    add = dict(add or {})
    outputs = _evaluate(closed.jaxpr, closed.consts, args, add, replace or {})
    if add:
        raise ValueError(f"{len(add)} value(s) to perturb are constants of the program: they do not depend on its "
                         "inputs, so nothing can be added to them")
    return outputs


def _evaluate(jaxpr, consts, args, add, replace) -> list:
    env = {}

    def write(var, value):
        env[var] = value + add.pop(var) if var in add else value

    def read(atom):
        return atom.val if isinstance(atom, jcore.Literal) else env[atom]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        write(var, value)
    for eqn in jaxpr.eqns:
        inputs = [read(atom) for atom in eqn.invars]
        name = _custom_jvp_name(eqn)
        if name in replace:
            outputs = [replace[name](*inputs[eqn.params["num_consts"]:])]
        elif eqn.primitive is _JIT and replace:
            inner = eqn.params["jaxpr"]
            outputs = _evaluate(inner.jaxpr, inner.consts, inputs, {}, replace)
        else:
            outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
            outputs = outputs if eqn.primitive.multiple_results else [outputs]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            if not isinstance(var, jcore.DropVar):
                write(var, value)
    return [read(atom) for atom in jaxpr.outvars]
