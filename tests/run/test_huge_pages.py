"""Tests of ``cnn_jax.huge_pages``: the environment it builds, the re-execution, and the page faults it saves."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cnn_jax import huge_pages

SUPPORTED = huge_pages.environment({}) is not None  # glibc 2.35+ and transparent huge pages not "never"
needs_support = pytest.mark.skipif(not SUPPORTED, reason="needs glibc >= 2.35 and transparent huge pages")


@needs_support
def test_environment_adds_the_tunable_once_and_keeps_other_tunables():
    assert huge_pages.environment({})["GLIBC_TUNABLES"] == huge_pages.TUNABLE
    env = huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{huge_pages.TUNABLE}" and env["HOME"] == "/h"
    assert huge_pages.environment(env) is None  # already set: nothing to do, no second re-execution


@pytest.mark.parametrize("tunables", ["glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"])
def test_a_hugetlb_the_user_set_is_kept(tunables):
    assert huge_pages.environment({"GLIBC_TUNABLES": tunables}) is None  # never =1 appended over it


def test_reexec_runs_the_same_command_with_the_tunable(monkeypatch):
    calls = []
    monkeypatch.setattr(huge_pages.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(huge_pages.sys, "orig_argv", ["python3", "-m", "experiments.mnist", "--epochs=1"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    huge_pages.reexec()
    if not SUPPORTED:
        assert calls == []
        return
    (executable, argv, env), = calls
    assert executable == sys.executable and argv == [sys.executable, "-m", "experiments.mnist", "--epochs=1"]
    assert huge_pages.TUNABLE in env["GLIBC_TUNABLES"].split(":")


PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp
    step = jax.jit(lambda x: jnp.cumsum(x, axis=0)[::-1] @ x[:, :8])  # a 64 MiB temporary, freed after each call
    x = jnp.ones((4096, 4096), jnp.float32)
    jax.block_until_ready(step(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        jax.block_until_ready(step(x))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
""")


@needs_support
def test_the_tunable_spares_xla_temporaries_most_page_faults():
    # Without it each call faults its temporaries back in, 4 KiB at a time (33,920 faults a call on the dev VM);
    # with it, in 2 MiB huge pages (712). The bar, 10x fewer, leaves room for faults the tunable does not touch.
    faults = {}
    for name, env in (("plain", {"GLIBC_TUNABLES": ""}), ("huge", huge_pages.environment({}))):
        out = subprocess.run([sys.executable, "-c", PROBE], env={**_base_env(), **env}, capture_output=True,
                             text=True, check=True, timeout=300)
        faults[name] = int(out.stdout.split()[-1])
    assert faults["plain"] > 10_000
    assert faults["huge"] * 10 < faults["plain"], faults


def _base_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
