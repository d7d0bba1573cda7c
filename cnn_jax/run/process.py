"""Process setup, done once by an entry point before anything heavy is imported: `setup_process(Process(...))`.

It does four things, each with its off switch (a setting, so a flag of every experiment):

- huge pages: re-executes the command once with glibc's transparent-huge-page tunable (`cnn_jax.huge_pages`);
- compiler memory: hands the heap XLA's compiler freed back to the OS after each compile (`cnn_jax.freed_memory`);
- the persistent compilation cache, under `cnn_jax.caches.cache_dir("jax")` by default;
- joining a multi-process run (`jax.distributed`), before anything touches the devices;

and quiets TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL=2`` unless set), since TensorFlow only reads data here.

No import and no library function changes the process: only this call does, so a library user (a test, a
notebook) gets none of it unless they ask.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional

from cnn_jax import huge_pages
from cnn_jax.caches import cache_dir, private_dir
from cnn_jax.settings import bookkeeping

START_TIME = time.time()  # An entry point imports this module first, so wall times count the imports that follow.
MIN_CACHED_COMPILE_S = 0.5  # compiles shorter than this are not worth a cache entry


@dataclasses.dataclass(frozen=True)
class Process:
    """How the process is set up: none of it changes what a run computes.

    Attributes:
      huge_pages: re-execute once with glibc's transparent-huge-page tunable (glibc.malloc.hugetlb=1), which
        saves the page faults of XLA's per-step buffers; a GLIBC_TUNABLES that sets glibc.malloc.hugetlb
        itself is kept as it is.
      release_compiler_memory: hand the heap that XLA's compiler freed back to the OS after each compile
        (glibc's malloc_trim).
      compilation_cache_dir: persistent XLA compilation cache; default $CNN_JAX_CACHE_DIR/jax
        (~/.cache/cnn_jax/jax); empty to disable.
      coordinator_address: host:port of process 0, for multi-process runs (jax.distributed), where its
        coordinator listens (that address only; an IP address other hosts reach, not a name that resolves to
        loopback); 'auto' on TPU pod slices and SLURM/MPI clusters, which JAX detects.
      num_processes: processes in a multi-process run.
      process_id: this process's index in a multi-process run.
      heartbeat_timeout_s: a multi-process run stops when a process has not been heard from for
        this many seconds.
      initialization_timeout_s: seconds to wait for every process of a multi-process run to join; past it,
        each process stops with one error line.
    """
    huge_pages: bool = bookkeeping(True)
    release_compiler_memory: bool = bookkeeping(True)
    compilation_cache_dir: Optional[str] = bookkeeping(None)
    coordinator_address: Optional[str] = bookkeeping(None)
    num_processes: int = bookkeeping(1)
    process_id: int = bookkeeping(0)
    heartbeat_timeout_s: int = bookkeeping(100)
    initialization_timeout_s: int = bookkeeping(300)


def setup_process(config: Process = Process()) -> None:
    """Sets up this process as `config` says; call it once, first thing in an entry point's main.

    Raises ValueError for multi-process settings that cannot work (`cnn_jax.train.maybe_initialize_distributed`).
    """
    if config.huge_pages:
        huge_pages.reexec()  # glibc reads its tunables at the start: the re-execution comes before any other work
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its C++ logs
    # Imported only now: imported before the re-execution, they would be imported twice.
    import jax

    from cnn_jax import freed_memory
    from cnn_jax.train import sharding

    if config.release_compiler_memory:
        freed_memory.release_after_compiles()
    cache = cache_dir("jax") if config.compilation_cache_dir is None else config.compilation_cache_dir
    if cache:
        try:  # XLA loads compiled programs from it: a directory others can write could hold planted ones
            cache = private_dir(cache)
        except OSError as error:  # UnsafeCacheDirError included
            logging.getLogger(__name__).warning("XLA's compilation cache is off: %s", error)
        else:
            jax.config.update("jax_compilation_cache_dir", str(cache))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
    sharding.maybe_initialize_distributed(
        config.coordinator_address, config.num_processes, config.process_id,
        heartbeat_timeout_s=config.heartbeat_timeout_s, initialization_timeout_s=config.initialization_timeout_s)
