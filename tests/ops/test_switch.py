"""The one kernel switch, ``ops.kernels(mode)``: its modes, its environment variable, and the private JAX API it
rests on (``ops.jax_internals``), which these tests pin: they fail loudly when a JAX release changes it."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cnn_jax import ops
from cnn_jax.ops import switch


def test_the_mode_holds_for_its_block_and_ends_with_it():
    assert switch.mode() == "fast"
    with ops.kernels("portable"):
        assert switch.mode() == "portable" and not switch.custom_kernels() and not switch.joins_ops()
        with ops.kernels("separate"):
            assert switch.mode() == "separate" and switch.custom_kernels() and not switch.joins_ops()
        assert switch.mode() == "portable"
    assert switch.mode() == "fast" and switch.custom_kernels() and switch.joins_ops()


def test_a_function_jitted_in_one_mode_is_traced_again_in_another():
    """The mode is part of jit's cache key: a cached trace from mode "fast" is never reused in "portable"."""
    traces = []

    @jax.jit
    def f(x):
        traces.append(switch.mode())
        return x + 1

    x = jnp.ones(3)
    f(x)
    f(x)
    with ops.kernels("portable"):
        f(x)
    with ops.kernels("separate"):
        f(x)
    f(x)
    assert traces == ["fast", "portable", "separate"]


def test_an_unknown_mode_is_refused_with_the_modes_named():
    with pytest.raises(ValueError, match=r"unknown kernel mode 'xla': use one of \('fast', 'separate', 'portable'\)"):
        ops.kernels("xla")


def run_python(code: str, **environment):
    env = dict(os.environ, **environment)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_the_environment_variable_sets_the_process_default():
    done = run_python("from cnn_jax.ops import switch; print(switch.mode())", CNN_JAX_KERNELS="separate")
    assert done.stdout.strip() == "separate", done.stderr


def test_an_unknown_environment_value_names_the_variable_and_the_fix():
    done = run_python("import jax.numpy as jnp; from cnn_jax import ops; ops.conv2d(jnp.ones((1, 3, 3, 1)), "
                      "jnp.ones((3, 3, 1, 1)))", CNN_JAX_KERNELS="xla")
    assert done.returncode != 0
    assert "CNN_JAX_KERNELS='xla' is not a kernel mode: use one of ('fast', 'separate', 'portable')" in done.stderr
