"""The cached oneDNN library (issue 30): loaded only from a private directory and only when its SHA-256 matches the
sum written beside it at build time; a planted, empty or damaged library is rebuilt once, and its code never runs.

The rebuilds here copy the library this session built (``_compile`` replaced), so the cache logic is tested in
milliseconds; the real compiler builds that library once per environment (the conftest keeps it between
sessions) and ``test_onednn.py`` tests what it computes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import types

import pytest

from cnn_jax.ops import onednn
from cnn_jax.ops.onednn import build

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN kernel not built here (see the log)")

# A library whose constructor runs when it is loaded, as a planted one's would, and leaves a mark.
PLANTED_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *mark = getenv("CNN_JAX_PLANTED_MARK");
    FILE *file = mark ? fopen(mark, "w") : NULL;
    if (file) { fputs("the planted library ran", file); fclose(file); }
}
"""


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root, with builds that copy this session's verified library and are counted."""
    good = build._library_path()  # the session's library, built and verified by onednn.available()
    monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def copy_the_good_library(output):
        builds.append(output)
        shutil.copyfile(good, output)

    monkeypatch.setattr(build, "_compile", copy_the_good_library)
    library = build._library_path()
    return types.SimpleNamespace(library=library, sum=build._sum_path(library), builds=builds, good=good)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A shared library with a constructor that writes a mark file when loaded: (its path, the mark's path)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        pytest.skip("no C compiler to build the planted library with")
    (tmp_path / "planted.c").write_text(PLANTED_SOURCE)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "planted.so"), str(tmp_path / "planted.c")],
                   check=True)
    mark = tmp_path / "mark"
    monkeypatch.setenv("CNN_JAX_PLANTED_MARK", str(mark))
    return tmp_path / "planted.so", mark


def test_the_planted_library_runs_its_constructor_when_loaded(planted):
    """The reproduction's premise: loading a library runs its code, so loading one is trusting it."""
    import ctypes

    library, mark = planted
    ctypes.CDLL(str(library))
    assert mark.read_text() == "the planted library ran"


def test_a_build_records_the_sum_and_the_next_process_loads_it_without_building(cache):
    loaded = build._open_library()
    assert loaded.CnnJaxConv and len(cache.builds) == 1
    assert cache.sum.read_text() == sha256(cache.library) + "\n" and sha256(cache.library) == sha256(cache.good)
    assert sorted(os.listdir(cache.library.parent)) == [cache.library.name, cache.sum.name]  # nothing left aside
    build._open_library()
    assert len(cache.builds) == 1


@pytest.mark.parametrize("its_sum", ["none", "a real build's"])
def test_a_planted_library_is_rebuilt_and_never_run(cache, planted, caplog, its_sum):
    library, mark = planted
    shutil.copyfile(library, cache.library)
    expected = "it has no SHA-256 beside it"
    if its_sum != "none":
        cache.sum.write_text(sha256(cache.good) + "\n")
        expected = "its SHA-256 differs from the one written beside it"
    with caplog.at_level(logging.WARNING):
        loaded = build._open_library()
    assert not mark.exists(), "the planted library's code ran"
    assert loaded.CnnJaxConv and len(cache.builds) == 1 and sha256(cache.library) == sha256(cache.good)
    assert cache.sum.read_text() == sha256(cache.good) + "\n"
    assert f"rebuilding the oneDNN kernel library {cache.library}: {expected}" in caplog.text


@pytest.mark.parametrize("contents", [b"", b"\x7fELF cut short"], ids=["empty", "cut short"])
def test_a_broken_library_whose_sum_matches_is_rebuilt_once(cache, caplog, contents):
    """An empty .so (a full disk at build time) meant XLA for good; now it is rebuilt, and the rebuild is used."""
    cache.library.write_bytes(contents)
    cache.sum.write_text(hashlib.sha256(contents).hexdigest() + "\n")
    with caplog.at_level(logging.WARNING):
        assert build._open_library().CnnJaxConv
    assert "it does not load" in caplog.text and len(cache.builds) == 1
    build._open_library()
    assert len(cache.builds) == 1


def test_a_build_that_does_not_load_is_not_cached(cache, monkeypatch):
    monkeypatch.setattr(build, "_compile", lambda output: output.write_bytes(b"not a library"))
    with pytest.raises(build.Unavailable, match="built just now, is unusable: it does not load"):
        build._open_library()
    assert os.listdir(cache.library.parent) == []


@pytest.mark.parametrize("open_directory", ["the library's", "onednn/", "the cache root"])
def test_a_cache_directory_others_can_write_is_refused_and_nothing_in_it_runs(cache, planted, caplog,
                                                                              open_directory):
    """A planted library with a matching sum (whoever can write the directory can write the sum) is not loaded:
    convolutions stay on XLA, with one warning that says how to fix it."""
    library, mark = planted
    shutil.copyfile(library, cache.library)
    cache.sum.write_text(sha256(cache.library) + "\n")
    directory = {"the library's": cache.library.parent, "onednn/": cache.library.parent.parent,
                 "the cache root": cache.library.parent.parent.parent}[open_directory]
    directory.chmod(0o777)
    with caplog.at_level(logging.WARNING):
        assert build.load.__wrapped__() is None  # load() itself is cached for the process
    assert not mark.exists(), "the planted library's code ran"
    assert not cache.builds
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("oneDNN convolutions unavailable, using XLA's: ")
    assert str(directory) in warning and "can be written by group or others" in warning
    assert "fix:" in warning and "CNN_JAX_CACHE_DIR" in warning


def test_the_library_and_its_sum_are_written_durably_in_that_order(cache, monkeypatch):
    """The library is fsynced before its rename, the directory after it, and the sum only then."""
    synced = []
    fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    build._open_library()
    directory = str(cache.library.parent)
    library = next(i for i, path in enumerate(synced) if path.endswith("/" + cache.library.name))
    renamed = synced.index(directory, library)
    summed = next(i for i, path in enumerate(synced) if os.path.basename(path).startswith(f".{cache.sum.name}."))
    assert library < renamed < summed and synced[summed + 1:].count(directory) == 1
