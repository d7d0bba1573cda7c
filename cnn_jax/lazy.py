"""Package namespaces whose names are imported on first access, so importing a package costs nothing until used.

The rule for package faces: a face imports its names eagerly, unless importing it light is a promise its callers
rely on, tested where it is made. Three faces make one: ``cnn_jax.run`` (imported before the process setup, which
may re-execute the command: ``tests/run/test_run_process.py``), ``cnn_jax.data`` (``read_image`` without JAX:
``tests/export/test_predict.py``) and ``cnn_jax.export`` (runtimes that never import JAX:
``tests/export/test_export_portable.py``). Those three use ``lazy_names``; every other face is a plain list of
imports.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def lazy_names(package: str, sources: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable, Callable]:
    """`(__all__, __getattr__, __dir__)` for `package`, whose public names live in its submodules `sources`
    ({submodule: names}); a submodule's own name gives the submodule."""
    module_of = {name: module for module, names in sources.items() for name in names}
    public = sorted(module_of)

    def getattr_(name):
        if name in sources:
            return importlib.import_module(f"{package}.{name}")
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def dir_():
        return sorted(set(vars(sys.modules[package])) | set(public))

    return public, getattr_, dir_
