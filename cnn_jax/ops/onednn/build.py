"""Compiles ``conv.cc`` against the pip-installed oneDNN once, caches the library, and registers it with XLA.

The kernel needs the PyPI packages ``onednn-cpu-gomp`` (the library) and ``onednn-devel-cpu-gomp`` (its headers),
a C++17 compiler (``$CXX``, else ``g++``) and jaxlib's FFI headers. The build is keyed by the source, jaxlib and
oneDNN versions, so it runs once per environment (about 5 s) and later processes load the cached ``.so``.
When anything is missing, ``load()`` says why and convolutions stay on XLA.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import jax

from cnn_jax import caches

SOURCE = Path(__file__).with_name("conv.cc")
TARGET = "cnn_jax_conv"
FUSED_TARGET = "cnn_jax_conv_fused"  # the inference forward with an epilogue (bias, residual, activation)


class Unavailable(RuntimeError):
    """The oneDNN kernel cannot be built or loaded here; the message says what is missing."""


def _package_file(package: str, name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the PyPI package {package} is not installed (pip install {package}==2023.2.0)") from None
    for file in dist.files or ():
        path = Path(dist.locate_file(file)).resolve()
        if path.as_posix().endswith(name):
            return path
    raise Unavailable(f"{package} has no {name}")


def _compile(output: Path) -> None:
    header = _package_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    library = _package_file("onednn-cpu-gomp", "lib/libdnnl.so")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise Unavailable(f"no C++ compiler {compiler!r} on PATH (install g++ or set CXX)")
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{header.parents[2]}", str(SOURCE), "-o", str(output),
               f"-L{library.parent}", "-ldnnl", f"-Wl,-rpath,{library.parent}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise Unavailable(f"compiling {SOURCE.name} failed:\n{done.stderr[-2000:]}")


def _library_path() -> Path:
    _package_file("onednn-cpu-gomp", "lib/libdnnl.so")  # raises, naming the package, when it is absent
    versions = [importlib.metadata.version(p) for p in ("jaxlib", "onednn-cpu-gomp")]
    key = hashlib.sha256(SOURCE.read_bytes() + repr(versions).encode()).hexdigest()[:16]
    path = caches.cache_dir("onednn") / key / "libcnn_jax_onednn.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # build aside, then rename: no half-written .so
            built = Path(tmp) / path.name
            _compile(built)
            os.replace(built, path)
    return path


@functools.lru_cache(maxsize=None)
def load() -> Optional[ctypes.CDLL]:
    """The registered kernel library, or None (logged once with the reason) when it cannot be had."""
    try:
        library = ctypes.CDLL(str(_library_path()))
    except (Unavailable, OSError) as error:
        logging.getLogger(__name__).warning("oneDNN convolutions unavailable, using XLA's: %s", error)
        return None
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CnnJaxConv), platform="cpu")
    jax.ffi.register_ffi_target(FUSED_TARGET, jax.ffi.pycapsule(library.CnnJaxConvFused), platform="cpu")
    library.CnnJaxConvImplementation.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    library.CnnJaxConvImplementation.restype = ctypes.c_char_p
    return library
