"""Compiles ``conv.cc`` against the pip-installed oneDNN once, caches the library, and registers it with XLA.

The kernel needs the PyPI packages ``onednn-cpu-gomp`` (the library) and ``onednn-devel-cpu-gomp`` (its headers),
a C++17 compiler (``$CXX``, else ``g++``) and jaxlib's FFI headers. The build is keyed by the source, jaxlib and
oneDNN versions, so it runs once per environment (a few seconds) and later processes load the cached ``.so``.
When anything is missing, ``load()`` says why and convolutions stay on XLA.

A loaded library runs its code in the process, so the cache is guarded:

- its directory, ``caches.cache_dir("onednn")/<key>``, must pass ``caches.private_dir`` (this user's, written by
  no one else); one that fails is refused: convolutions stay on XLA, with one warning that says how to fix it;
- the library is compiled aside, fsynced and renamed into place, the directory fsynced, and only then is its
  SHA-256 written beside it (``libcnn_jax_onednn.so.sha256``, durably too), so a library without its sum is an
  unfinished build;
- before loading, the library is hashed and compared with that sum, then loaded by its path, in a directory only
  this user can write. A library that is absent, has no sum, differs from its sum or does not load is rebuilt,
  once per process, and the new build is loaded before it is cached; one that does not load is not cached, and
  convolutions stay on XLA.

What the sum catches: a library cut short or damaged (a crash or full disk during the build, a bad copy) or put
there by other means than this build. Whoever can write the directory can write a sum too: the directory check is
what keeps other users out (see ``cnn_jax.caches`` for what it does not cover).
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

from cnn_jax import caches, files

SOURCE = Path(__file__).with_name("conv.cc")
TARGET = "cnn_jax_conv"
FUSED_TARGET = "cnn_jax_conv_fused"  # the inference forward with an epilogue (bias, residual, activation)
LIBRARY = "libcnn_jax_onednn.so"
SUM_SUFFIX = ".sha256"
_SUM_CHARS = 80  # 64 hex digits and a newline: a longer file is not a sum, and is not read whole


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
    """Where this source, jaxlib and oneDNN's library is cached, in a directory that passes ``private_dir``."""
    _package_file("onednn-cpu-gomp", "lib/libdnnl.so")  # raises, naming the package, when it is absent
    versions = [importlib.metadata.version(p) for p in ("jaxlib", "onednn-cpu-gomp")]
    key = hashlib.sha256(SOURCE.read_bytes() + repr(versions).encode()).hexdigest()[:16]
    return caches.private_dir(caches.cache_dir("onednn") / key) / LIBRARY


def _sum_path(library: Path) -> Path:
    return library.with_name(library.name + SUM_SUFFIX)


class _Unusable(Exception):
    """The cached library cannot be loaded as it is; the message says why (empty: it is absent)."""


def _loaded(path: Path) -> ctypes.CDLL:
    """The library at ``path``, loaded, with the symbols this module calls; raises _Unusable."""
    try:
        library = ctypes.CDLL(str(path))
        for symbol in ("CnnJaxConv", "CnnJaxConvFused", "CnnJaxConvImplementation"):
            getattr(library, symbol)
    except (OSError, AttributeError) as error:
        raise _Unusable(f"it does not load ({error})") from None
    return library


def _load_verified(library: Path) -> ctypes.CDLL:
    """The cached library, loaded when its SHA-256 matches the sum beside it; raises _Unusable."""
    if not library.exists():
        raise _Unusable("")
    try:
        with open(_sum_path(library), encoding="ascii") as file:
            expected = file.read(_SUM_CHARS).strip()
        with open(library, "rb") as file:
            if hashlib.file_digest(file, "sha256").hexdigest() != expected:
                raise _Unusable("its SHA-256 differs from the one written beside it when it was built")
    except FileNotFoundError:
        raise _Unusable("it has no SHA-256 beside it (a build cut short, one from before sums were kept, or a file "
                        "put there by other means)") from None
    except (OSError, ValueError) as error:
        raise _Unusable(f"it or its SHA-256 is unreadable ({error})") from None
    return _loaded(library)


def _build(library: Path) -> ctypes.CDLL:
    """Compiles the library aside and loads it; then puts it in place and writes its SHA-256 beside it, each durably
    (fsynced, renamed, the directory fsynced). A build that does not load is not cached: raises _Unusable."""
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:  # built aside, then renamed: no half-written .so
        built = Path(tmp) / library.name
        _compile(built)
        files.fsync_tree(str(built))
        with open(built, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        loaded = _loaded(built)  # a unique path: a process never finds another library loaded under its name
        os.replace(built, library)  # atomic, also over a broken library or another process's build
        files.fsync_directory(str(library.parent))
    files.write_atomically(str(_sum_path(library)), digest + "\n")
    return loaded


def _open_library() -> ctypes.CDLL:
    """The cached library, verified, or built once when it is absent or unusable; raises Unavailable or OSError
    (``caches.UnsafeCacheDirError`` for a cache directory that is refused)."""
    library = _library_path()
    try:
        return _load_verified(library)
    except _Unusable as problem:
        if str(problem):
            logging.getLogger(__name__).warning("rebuilding the oneDNN kernel library %s: %s", library, problem)
    try:
        return _build(library)
    except _Unusable as problem:
        raise Unavailable(f"{library}, built just now, is unusable: {problem}") from None


@functools.lru_cache(maxsize=None)
def load() -> Optional[ctypes.CDLL]:
    """The registered kernel library, or None (logged once with the reason) when it cannot be had."""
    try:
        library = _open_library()
    except (Unavailable, OSError) as error:
        logging.getLogger(__name__).warning("oneDNN convolutions unavailable, using XLA's: %s", error)
        return None
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CnnJaxConv), platform="cpu")
    jax.ffi.register_ffi_target(FUSED_TARGET, jax.ffi.pycapsule(library.CnnJaxConvFused), platform="cpu")
    library.CnnJaxConvImplementation.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    library.CnnJaxConvImplementation.restype = ctypes.c_char_p
    return library
