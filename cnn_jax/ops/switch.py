"""The one switch that chooses kernels for the whole library: ``ops.kernels(mode)``.

Layers and models are written as the maths (conv -> BatchNorm -> activation); which kernel computes each op is
chosen in ``cnn_jax.ops`` by this mode:

- ``"fast"`` (the default): every fast path. On a CPU backend of one device, float32 and bfloat16 convolutions
  run on oneDNN (``ops.onednn``); depthwise ones elsewhere as shifted multiply-adds; in inference a small
  one-channel convolution runs as shifted multiply-adds that XLA fuses with what follows (bias, activation, pool);
  ``ops.conv2d_epilogue`` computes conv -> scale and shift -> (+ residual) -> activation as one oneDNN kernel
  (``cnn_jax.fused`` runs an evaluation-mode ``ConvBN`` through it); BatchNorm's training gradient and max
  pooling's are written out by hand, and dropout's mask is hashed in one pass.
- ``"separate"``: the same kernel for each op, but none that joins several ops, so every module computes its own
  output and every activation is a ``jax.nn`` call. ``cnn_jax.interpret`` traces models in it.
- ``"portable"``: standard JAX only: ``lax.conv_general_dilated``, ``lax.reduce_window``, the derivatives that
  JAX derives, ``jax.random.bernoulli``. Every backend and every exported graph runs it (``cnn_jax.export``
  traces in it), and it is the reference the other modes are tested against.

Set it for a block with ``with ops.kernels("portable"): ...``, or for a process with ``CNN_JAX_KERNELS`` (an
experiment's ``--kernels`` flag sets the same). The mode is part of jit's cache key: a function jitted in one mode
is traced again in another, never reused.
"""
from __future__ import annotations

import os

from cnn_jax.ops import jax_internals

MODES = ("fast", "separate", "portable")
ENV = "CNN_JAX_KERNELS"


_ENVIRONMENT = os.environ.get(ENV, "") or "fast"  # checked where the mode is first read, not on import
_MODE = jax_internals.jit_keyed_choice("kernels", MODES, _ENVIRONMENT if _ENVIRONMENT in MODES else "fast",
                                       help="which kernels cnn_jax.ops uses")


def kernels(mode: str):
    """A context in which ``cnn_jax.ops`` chooses its kernels by ``mode`` (one of ``MODES``)."""
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}: use one of {MODES}")
    return _MODE(mode)


def mode() -> str:
    """The kernel mode in force here: ``"fast"``, ``"separate"`` or ``"portable"``."""
    if _ENVIRONMENT not in MODES:
        raise ValueError(f"{ENV}={_ENVIRONMENT!r} is not a kernel mode: use one of {MODES}, or unset it")
    return _MODE.value


def joins_ops() -> bool:
    """Whether kernels that compute several ops at once may run (mode ``"fast"``)."""
    return mode() == "fast"


def custom_kernels() -> bool:
    """Whether kernels and derivatives of cnn_jax's own may run: oneDNN, shifted multiply-adds, hand-written
    gradients, the hashed dropout mask (every mode but ``"portable"``)."""
    return mode() != "portable"
