"""One root for every cache cnn_jax keeps: ``$CNN_JAX_CACHE_DIR``, by default ``~/.cache/cnn_jax``.

Each cache is a subdirectory named by what it holds, so clearing one cache, or all of them, is one ``rm -r``:

=============  ==============================================================
``input/``     decoded tfds datasets and image-folder scans (``cnn_jax.data``)
``jax/``       XLA's persistent compilation cache (``cnn_jax.run.setup_process``)
``onednn/``    the compiled oneDNN convolution library (``cnn_jax.ops.onednn``)
``pretrained/``  converted pretrained weights (``cnn_jax.pretrained``)
=============  ==============================================================
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CNN_JAX_CACHE_DIR"
KINDS = ("input", "jax", "onednn", "pretrained")


def cache_root() -> Path:
    """``$CNN_JAX_CACHE_DIR``, or ``~/.cache/cnn_jax`` when it is unset or empty."""
    return Path(os.environ.get(CACHE_ENV) or Path("~") / ".cache" / "cnn_jax").expanduser()


def cache_dir(kind: str) -> Path:
    """The directory of one cache, ``cache_root() / kind`` (not created here)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache {kind!r}: use one of {KINDS}")
    return cache_root() / kind
