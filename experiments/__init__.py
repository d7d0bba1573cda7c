"""Runnable experiments: `python -m experiments.<name> --workdir=...`.

Run as a program, the package first re-executes the command once with glibc's transparent-huge-page tunable
(`cnn_jax.huge_pages` says why: a quarter to a third of a CPU training step is otherwise spent faulting pages),
before anything heavy is imported. `python -m` sets `sys.argv[0]` to "-m" while it imports this package.
"""
import sys

if sys.argv[:1] == ["-m"]:
    from cnn_jax import huge_pages

    huge_pages.reexec()
