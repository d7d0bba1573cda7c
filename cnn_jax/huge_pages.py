"""Transparent huge pages for XLA:CPU's per-step buffers, through glibc's ``glibc.malloc.hugetlb`` tunable.

XLA:CPU allocates each execution's temporary buffer anew and frees it after the step. glibc serves every block
above 32 MiB (its largest mmap threshold) with a fresh ``mmap``, so each training step faults its whole temporary
buffer back in, 4 KiB at a time: 10,000 page faults a step for simple_cnn at batch 128 (a 39 MB buffer) and
60,000 for resnet20, a quarter to a third of their step time on the 2-core VM (BENCHMARKS.md). With the tunable
set (glibc 2.35 and later) malloc asks the kernel for transparent huge pages for those blocks: 2 MiB faults, 512
times fewer.

glibc reads its tunables once, when the process starts, so ``reexec()`` re-executes the same command once with the
tunable added to ``GLIBC_TUNABLES``; ``cnn_jax.run.setup_process`` calls it first thing, before anything heavy is
imported, unless its ``huge_pages`` setting is off. A ``GLIBC_TUNABLES`` that sets ``glibc.malloc.hugetlb`` itself
(``=0`` to turn huge pages off in any entry point) is left as it is.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()
    except (AttributeError, ValueError, OSError):
        return ()


def _kernel_allows() -> bool:
    """Transparent huge pages are "always" or "madvise" (the tunable madvises), not "never"."""
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def environment(env: Mapping[str, str]) -> Optional[dict]:
    """``env`` with the tunable added to ``GLIBC_TUNABLES``, or None where ``GLIBC_TUNABLES`` sets
    ``glibc.malloc.hugetlb`` already (to this value or any other) or it would do nothing (not glibc 2.35+, no
    transparent huge pages)."""
    tunables = env.get("GLIBC_TUNABLES", "")
    name = TUNABLE.split("=")[0]
    if any(entry.split("=")[0] == name for entry in tunables.split(":")):
        return None
    if _glibc_version() < (2, 35) or not _kernel_allows():
        return None
    return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec() -> None:
    """Re-executes this program with the tunable set; returns (doing nothing) where ``environment`` gives None."""
    env = environment(os.environ)
    if env is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
