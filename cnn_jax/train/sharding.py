"""Data parallelism: one mesh axis "data" over all devices; batches split, state replicated.

The mesh lists the devices process by process, so process p's devices hold rows [pB/P, (p+1)B/P) of a global
batch of B: the rows its input pipeline reads (``cnn_jax.data``).
"""
from __future__ import annotations

import contextlib
import errno
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
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {address!r} must be host:port, e.g. localhost:1234 or host0:1234")
    return host.strip("[]"), int(port)


def _resolve(address: str) -> list[tuple]:
    """The socket addresses of ``address`` (host:port); ValueError naming it when the host does not resolve."""
    host, port = _host_port(address)
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"the coordinator host {host!r} of --coordinator_address={address} does not resolve "
                         f"({error.strerror}): check the name, or give the IP address of process 0's machine") from None


_JOIN, _GO = b"cnn_jax-join", b"go"  # the pre-flight handshake: a join line from each process, then one go for all
_HANDSHAKE_BYTES = 256


def _timed_out(what: str, address: str, timeout_s: float) -> ValueError:
    return ValueError(f"{what} within the {timeout_s:g} s initialization timeout at the coordinator {address}: start "
                      "every process with the same --coordinator_address and --num_processes, check that process 0's "
                      "machine accepts connections on that port, or raise --initialization_timeout_s")


def _listen(address: str, addresses: list[tuple]) -> socket.socket:
    """Process 0's pre-flight listener on ``address``: the bind test of the coordinator's address and port.

    Every address the host resolves to is bound (as the coordinator will bind them); the first one listens.
    """
    bound: list[socket.socket] = []
    try:
        for family, kind, protocol, _, where in addresses:
            if any(s.getsockname()[:2] == where[:2] for s in bound):
                continue
            bound.append(socket.socket(family, kind, protocol))
            bound[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            bound[-1].bind(where)
    except OSError as error:
        for s in bound:
            s.close()
        host, port = where[:2]
        advice = {errno.EADDRINUSE: f"port {port} is in use on this machine: stop what holds it (e.g. an earlier "
                                    "run still running), or give every process another port",
                  errno.EADDRNOTAVAIL: f"{host} is not an address of this machine: run process 0 on the machine "
                                       "the address names, or give its address",
                  errno.EACCES: f"port {port} needs privileges: give every process a port above 1023"}
        raise ValueError(f"process 0 cannot start the coordinator at {address} ({error.strerror}): "
                         + advice.get(error.errno, "check the address")) from None
    listener, *others = bound
    for s in others:
        s.close()
    listener.listen()
    return listener


def _gather(address: str, addresses: list[tuple], num_processes: int, timeout_s: float) -> None:
    """Process 0: waits until processes 1..N-1 have each joined with the same process count, then lets them on.

    JAX's coordinator ends the whole interpreter (a C++ fatal error, no Python exception) when its peers do not
    all arrive within the initialization timeout; waiting for them here first makes that a ValueError.
    """
    deadline = time.monotonic() + timeout_s
    joined: dict[int, socket.socket] = {}
    with _listen(address, addresses) as listener:
        try:
            while len(joined) < num_processes - 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(set(range(1, num_processes)) - joined.keys())
                    raise _timed_out(f"process(es) {missing} of {num_processes} did not join", address, timeout_s)
                listener.settimeout(remaining)
                try:
                    peer, _ = listener.accept()
                except TimeoutError:
                    continue
                _admit(peer, joined, num_processes, min(remaining, 5.0))
            for peer in joined.values():
                peer.sendall(_GO + b"\n")
            for peer in joined.values():  # each closes first, so no connection lingers on the coordinator's port
                peer.settimeout(2.0)
                with contextlib.suppress(OSError):
                    peer.recv(1)
        finally:
            for peer in joined.values():
                peer.close()


def _read_line(peer: socket.socket) -> str:
    with peer.makefile("rb") as stream:
        return stream.readline(_HANDSHAKE_BYTES).decode("utf-8", "replace").strip()


def _admit(peer: socket.socket, joined: dict, num_processes: int, timeout_s: float) -> None:
    """Reads one join line from ``peer``: kept in ``joined`` when it fits, answered with the reason otherwise."""
    peer.settimeout(timeout_s)
    try:
        words = _read_line(peer).split()
    except OSError:
        words = []
    if len(words) != 3 or words[0] != _JOIN.decode() or not (words[1].isdigit() and words[2].isdigit()):
        peer.close()  # not a process of this run (a port scanner, another program)
        return
    process_id, count = int(words[1]), int(words[2])
    if count != num_processes:
        reason = (f"process 0 runs with --num_processes={num_processes}, this one with {count}: give every process "
                  "the same --num_processes")
    elif process_id in joined or not 0 < process_id < num_processes:
        reason = f"another process has joined as --process_id={process_id}: give each process its own id"
    else:
        joined[process_id] = peer
        return
    with contextlib.suppress(OSError):
        peer.sendall(f"refused {reason}\n".encode())
    peer.close()


def _join(address: str, process_id: int, num_processes: int, timeout_s: float) -> None:
    """Processes 1..N-1: joins process 0's pre-flight listener and waits for its go (every process has joined).

    JAX's client also ends the interpreter when it cannot reach the coordinator in time, so the reaching and
    the waiting happen here, where they can end in a ValueError.
    """
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            peer = socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            break
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"cannot reach the coordinator at {address} within the {timeout_s:g} s initialization timeout "
                    f"({error.strerror or error}): start process 0 there, check the address and port, or raise "
                    "--initialization_timeout_s") from None
            time.sleep(0.25)
    with peer:
        try:
            peer.sendall(b"%s %d %d\n" % (_JOIN, process_id, num_processes))
            peer.settimeout(max(0.1, deadline - time.monotonic()))
            answer = _read_line(peer)
        except TimeoutError:
            raise _timed_out(f"process {process_id}: not every process joined", address, timeout_s) from None
        except OSError:
            answer = ""
    if answer == _GO.decode():
        return
    raise ValueError(f"the coordinator at {address} did not let process {process_id} join: "
                     + (answer.removeprefix("refused ") if answer.startswith("refused ") else
                        "process 0 closed the connection: see its error, then start every process again with the "
                        "same --coordinator_address and --num_processes"))


def maybe_initialize_distributed(coordinator_address: Optional[str], num_processes: int,
                                 process_id: int, *, heartbeat_timeout_s: int = 100,
                                 initialization_timeout_s: int = 300) -> None:
    """Joins a multi-process (multi-host) run when a coordinator address is given.

    Must run before anything touches the devices. Without an address this is single-process
    and does nothing. "auto" lets JAX read the cluster from its environment (Cloud TPU pod
    slices, SLURM, Open MPI), where it needs no address, process count or id. Processes wait up to
    ``initialization_timeout_s`` for each other; a process not heard from for ``heartbeat_timeout_s``
    stops the run (jax.distributed's defaults, 300 s and 100 s). CPU devices talk through gloo.

    With an address, the start is checked before JAX's, whose failures end the interpreter (a C++ fatal
    error, exit status 134) instead of raising: the host must resolve; process 0 binds the address (a busy
    port, or an address of another machine, is refused at once) and waits for every other process to join it
    over TCP with its id and the process count (a duplicate id or another count is refused); only then do all
    call ``jax.distributed.initialize``. What is left to JAX is a process that dies in the second between.

    The coordinator listens on the address given (``coordinator_bind_address``), not on every interface as
    JAX's default ``[::]:port`` does: a name that resolves to loopback on process 0's machine (Debian's
    ``127.0.1.1`` for its own host name) is then reachable only from that machine, so give other hosts' runs the
    machine's IP address. ``JAX_COORDINATOR_BIND_ADDRESS`` (e.g. ``[::]:1234``), when set, is used instead.

    Raises ValueError, one line naming the address, the timeout and the fix, for a process id out of range, a
    malformed or unresolvable address, a port process 0 cannot bind, processes that do not all join within the
    initialization timeout, or a failure of ``jax.distributed.initialize`` itself.
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
        _initialize(coordinator_address, **timeouts)
        log.info("process %d of %d joined the run", jax.process_index(), jax.process_count())
        return
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    addresses = _resolve(coordinator_address)
    if process_id == 0:
        _gather(coordinator_address, addresses, num_processes, initialization_timeout_s)
    else:
        _join(coordinator_address, process_id, num_processes, initialization_timeout_s)
    _initialize(coordinator_address, coordinator_address, num_processes, process_id,
                coordinator_bind_address=os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", coordinator_address),
                **timeouts)
    log.info("process %d of %d joined the run at %s", jax.process_index(), jax.process_count(),
             coordinator_address)


def _initialize(address: str, *args, **kwargs) -> None:
    """``jax.distributed.initialize``, with an error it raises (a port taken since the check) as one line."""
    try:
        jax.distributed.initialize(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 -- JaxRuntimeError, RuntimeError, ValueError: each means the same
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"jax.distributed could not start the run at the coordinator {address} ({first_line}): "
                         "check the address, the port and --num_processes, then start every process again") from None


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
