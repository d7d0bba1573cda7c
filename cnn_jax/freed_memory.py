"""Handing the memory that XLA's compiler freed back to the operating system (glibc's ``malloc_trim``).

Compiling a step on the CPU takes tens to hundreds of MB of heap, freed when the compiler is done; glibc keeps the
free pages mapped, so they stay in the process's resident memory while the step's first run adds its buffers on
top, and later allocations reuse only part of them. ``release()`` returns them; ``release_after_compiles()`` does
so after every XLA compile of the process (a ``jax.monitoring`` listener). Installing it changes the whole
process, so no library function does: ``cnn_jax.run.setup_process`` installs it (its ``release_compiler_memory``
setting), as the entry points that train or measure do. Elsewhere than glibc both do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # recorded by JAX when a compile has finished


@functools.lru_cache(maxsize=None)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release() -> bool:
    """Returns the heap's free pages to the OS (``malloc_trim(0)``); False where there is no glibc to ask."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _after_compile(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == BACKEND_COMPILE:
        release()


@functools.lru_cache(maxsize=None)
def release_after_compiles() -> None:
    """From now on, ``release()`` after each XLA compile of this process; installed once however often called."""
    if _libc() is not None:
        jax.monitoring.register_event_duration_secs_listener(_after_compile)
