"""Data parallelism: one mesh axis "data" over all devices; batches split, state replicated.

The mesh lists the devices process by process, so process p's devices hold rows [pB/P, (p+1)B/P) of a global
batch of B: the rows its input pipeline reads (``cnn_jax.data``).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import NoReturn, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, ordered by process, with the axis named "data".

    Raises ValueError when the processes have different numbers of devices (their shares of a batch must match).
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    counts = np.bincount([d.process_index for d in devices], minlength=jax.process_count())
    if len(set(counts.tolist())) > 1:
        raise ValueError(f"every process of a run must have the same number of devices; they have "
                         f"{counts.tolist()} (by process index)")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) dimension across the "data" axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def steps_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the batch dimension of a stack of batches (steps x batch x ...) across the "data" axis."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (params, optimizer state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises a clear error unless `batch_size` splits evenly over the mesh's devices (and so its processes)."""
    if batch_size % mesh.size:
        processes = len({d.process_index for d in mesh.devices.flat})
        of = f" of {processes} processes" if processes > 1 else ""
        lower, upper = batch_size // mesh.size * mesh.size, -(-batch_size // mesh.size) * mesh.size
        raise ValueError(
            f"The {what} {batch_size} is not divisible by the {mesh.size} devices{of}: use a "
            f"multiple of {mesh.size}, such as {upper}" + (f" or {lower}." if lower else "."))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} must be host:port, e.g. localhost:1234 or host0:1234")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Returns once the coordinator accepts TCP connections; raises ValueError naming it after ``timeout_s``.

    jax.distributed's client aborts the whole process (no Python exception) when it cannot reach the
    coordinator, so the wait is done here first, where it can end in one clear error.
    """
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"cannot reach the coordinator at {address} within the {timeout_s:g} s initialization timeout "
                    f"({error.strerror or error}): start process 0 there, check the address and port, or raise "
                    "--initialization_timeout_s") from None
            time.sleep(0.25)


def maybe_initialize_distributed(coordinator_address: Optional[str], num_processes: int,
                                 process_id: int, *, heartbeat_timeout_s: int = 100,
                                 initialization_timeout_s: int = 300) -> None:
    """Joins a multi-process (multi-host) run when a coordinator address is given.

    Must run before anything touches the devices. Without an address this is single-process
    and does nothing. "auto" lets JAX read the cluster from its environment (Cloud TPU pod
    slices, SLURM, Open MPI), where it needs no address, process count or id. Processes wait up to
    ``initialization_timeout_s`` for each other; a process not heard from for ``heartbeat_timeout_s``
    stops the run (jax.distributed's defaults, 300 s and 100 s). CPU devices talk through gloo.

    Raises ValueError for a process id out of range, a malformed address, or a coordinator that does not
    answer within the initialization timeout.
    """
    if not coordinator_address:
        return
    timeouts = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                    initialization_timeout=int(initialization_timeout_s))
    if heartbeat_timeout_s <= 0 or initialization_timeout_s <= 0:
        raise ValueError(f"the heartbeat and initialization timeouts must be positive seconds, got "
                         f"{heartbeat_timeout_s} and {initialization_timeout_s}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    if coordinator_address == "auto":
        jax.distributed.initialize(**timeouts)
        log.info("process %d of %d joined the run", jax.process_index(), jax.process_count())
        return
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    _host_port(coordinator_address)
    if process_id != 0:  # process 0 starts the coordinator itself
        _wait_for_coordinator(coordinator_address, initialization_timeout_s)
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
    log.info("process %d of %d joined the run at %s", jax.process_index(), jax.process_count(),
             coordinator_address)


_PEER_LOST = ("Gloo", "Connection closed by peer", "Connection reset by peer")  # a collective's partner died


def exit_with_error(message: str) -> NoReturn:
    """Ends the process with ``message`` on stderr and exit status 1.

    In a multi-process run it leaves at once: the normal exit runs jax.distributed's shutdown barrier, which
    waits for every process, up to the heartbeat timeout when one of them has died (the usual reason for
    the error). The others notice this process's exit through their collectives and stop too.
    """
    if not jax.distributed.is_initialized():
        sys.exit(message)
    if any(sign in message for sign in _PEER_LOST):
        message += (f" (process {jax.process_index()}: another process of this run stopped; run the same "
                    "commands again on every process to resume from the latest checkpoint)")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)
