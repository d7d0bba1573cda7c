"""Names and shapes of pytrees of arrays, and how two differ: the one comparison behind every "does not fit"."""
from __future__ import annotations

import jax
import numpy as np


def signature(tree, with_dtype: bool = True) -> dict[str, tuple]:
    """{"params/Conv_0/kernel": (shape, dtype name), ...} of a tree of arrays or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    def entry(leaf):
        shape = tuple(getattr(leaf, "shape", None) or np.shape(leaf))
        return (shape, str(getattr(leaf, "dtype", np.asarray(leaf).dtype))) if with_dtype else (shape,)

    return {jax.tree_util.keystr(path, simple=True, separator="/"): entry(leaf) for path, leaf in leaves}


def differences(have: dict, want: dict, have_name: str) -> list[str]:
    """Each name only in `have` (the `have_name`: a checkpoint, an export) or only in `want` (the model), and
    each whose shape or dtype differs, params first."""
    problems = []
    for name in sorted(have.keys() | want.keys(), key=lambda n: (not n.startswith("params"), n)):
        if name not in want:
            problems.append(f"{name}: only in the {have_name}")
        elif name not in have:
            problems.append(f"{name}: only in the model")
        elif have[name] != want[name]:
            problems.append(f"{name}: the {have_name} has shape {_described(have[name])}, "
                            f"the model {_described(want[name])}")
    return problems


def _described(entry: tuple) -> str:
    return f"{entry[0]}" + (f" {entry[1]}" if len(entry) > 1 else "")
