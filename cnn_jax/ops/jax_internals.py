"""The one private JAX API cnn_jax uses, in one place: a setting that is part of jit's cache key.

``ops.kernels(mode)`` must make a function that was jitted and run in one mode trace again in another, as JAX's
own settings do (``jax.default_matmul_precision``): JAX offers that to its own options only, through
``jax._src.config``. ``tests/ops/test_switch.py`` fails loudly when a JAX release changes this API.
"""
from __future__ import annotations

from typing import Sequence

from jax._src import config as _config


def jit_keyed_choice(name: str, values: Sequence[str], default: str, help: str):
    """A string setting among ``values``: ``state.value`` reads it, ``with state(value):`` sets it for a block
    (thread-local), and its value is part of jit's cache key and of the trace context.

    JAX would also read the environment variable ``name.upper()`` as its default, and fail on import when that
    holds an unknown value; ``name`` is registered with a dot (``cnn_jax.<name>``), which no environment variable
    has, so the caller reads its own variable and reports a wrong value where it is used.
    """
    return _config.enum_state(f"cnn_jax.{name}", list(values), default, help=help, include_in_jit_key=True,
                              include_in_trace_context=True)
