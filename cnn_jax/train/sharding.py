"""Data parallelism: one mesh axis "data" over all devices; batches split, state replicated."""
from __future__ import annotations

import logging
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, with the axis named "data"."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) dimension across the "data" axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (params, optimizer state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises a clear error unless `batch_size` splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        lower, upper = batch_size // mesh.size * mesh.size, -(-batch_size // mesh.size) * mesh.size
        raise ValueError(
            f"The {what} {batch_size} is not divisible by the {mesh.size} devices: use a "
            f"multiple of {mesh.size}, such as {upper}" + (f" or {lower}." if lower else "."))


def maybe_initialize_distributed(coordinator_address: Optional[str], num_processes: int,
                                 process_id: int) -> None:
    """Joins a multi-process (multi-host) run when a coordinator address is given.

    Must run before anything touches the devices. Without an address this is single-process
    and does nothing. "auto" lets JAX read the cluster from its environment (Cloud TPU pod
    slices, SLURM, Open MPI), where it needs no address, process count or id.
    """
    if not coordinator_address:
        return
    if coordinator_address == "auto":
        jax.distributed.initialize()
        logging.info("process %d of %d joined the run", jax.process_index(), jax.process_count())
        return
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    logging.info("process %d of %d joined the run at %s", jax.process_index(),
                 jax.process_count(), coordinator_address)
