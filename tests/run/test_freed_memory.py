"""``freed_memory.release`` hands freed heap pages back to the OS (glibc's malloc_trim), after each XLA compile
once ``release_after_compiles`` is installed, as ``cnn_jax.run.setup_process`` does (the engine does not)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cnn_jax import freed_memory

# 200 MB in 100 KB blocks (below glibc's mmap threshold, so on the heap), a block kept above them so that glibc
# cannot shrink the heap's top by itself, the 200 MB freed: resident memory before and after release().
CODE = """
import numpy as np
from cnn_jax import freed_memory
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
blocks = [np.ones(100_000 // 8) for _ in range(2000)]
keeper = np.ones(100_000 // 8)
del blocks
before = rss()
released = freed_memory.release()
print(released, before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not freed_memory.release(), reason="needs glibc")
def test_release_returns_freed_heap_pages_to_the_os():
    released, before, after = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                                             check=True).stdout.split()
    assert released == "True"
    assert int(before) - int(after) >= 150, (before, after)  # MB of the 200 freed


def test_each_xla_compile_is_followed_by_a_release(monkeypatch):
    calls = []
    monkeypatch.setattr(freed_memory, "release", lambda: calls.append(1) or True)
    freed_memory.release_after_compiles()
    freed_memory.release_after_compiles()  # installed once
    import jax
    import jax.numpy as jnp
    jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)))  # a program never compiled
    assert calls  # one release per compile it took (the function, and any helper op compiled with it)


def test_training_installs_nothing_process_wide(monkeypatch, tmp_path):
    from cnn_jax.train import loop

    class Stop(Exception):
        pass

    def run(*args):
        calls.append("run")
        raise Stop

    calls = []
    monkeypatch.setattr(freed_memory, "release_after_compiles", lambda: calls.append("install"))
    monkeypatch.setattr(loop, "_Run", run)
    with pytest.raises(Stop):
        loop.train_and_evaluate(None, None, None, str(tmp_path))
    assert calls == ["run"]  # the entry point's setup_process installs the release, not the engine
