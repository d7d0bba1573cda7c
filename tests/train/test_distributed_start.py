"""A multi-process start that cannot work ends in one `error:` line (exit status 1), never in JAX's C++ abort (exit
status 134): issue #30's reproductions (process 0 with no peer, an unresolvable host, a busy port) and their
class (an address of another machine, processes that disagree on the count), each run as the command a user
types, with small timeouts. Two processes that agree join through the pre-flight handshake and JAX alike."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

from helpers import ROOT

QUICK = ["--nohuge_pages", "--compilation_cache_dir=", "--data_dir=/nonexistent"]  # no re-execution, no data read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_COORDINATOR_BIND_ADDRESS", None)
    return env


def _command(tmp_path, address: str, process_id: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "experiments.mnist", f"--workdir={tmp_path / 'w'}", *QUICK,
            f"--coordinator_address={address}", "--num_processes=2", f"--process_id={process_id}",
            "--initialization_timeout_s=3", *flags]


def _error_line(outcome: tuple[int, str]) -> str:
    """The one `error:` line of a finished command, checked to be its whole report: exit status 1, no traceback."""
    code, err = outcome
    assert code == 1, (code, err[-3000:])  # not 134: JAX's abort never came
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    return errors[0]


def _run(command, timeout=60) -> tuple[int, str]:
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr


def test_process_0_without_its_peer_stops_at_the_timeout_with_one_line(tmp_path):
    port = _free_port()
    start = time.monotonic()
    line = _error_line(_run(_command(tmp_path, f"localhost:{port}", 0)))
    assert line == (f"error: process(es) [1] of 2 did not join within the 3 s initialization timeout at the "
                    f"coordinator localhost:{port}: start every process with the same --coordinator_address and "
                    "--num_processes, check that process 0's machine accepts connections on that port, or raise "
                    "--initialization_timeout_s")
    assert time.monotonic() - start < 45


def test_a_host_that_does_not_resolve_is_named(tmp_path):
    line = _error_line(_run(_command(tmp_path, "no-such-host.invalid:1234", 0)))
    assert line.startswith("error: the coordinator host 'no-such-host.invalid' of "
                           "--coordinator_address=no-such-host.invalid:1234 does not resolve (")
    assert line.endswith("): check the name, or give the IP address of process 0's machine")


def test_a_busy_port_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _error_line(_run(_command(tmp_path, f"localhost:{port}", 0)))
    assert line == (f"error: process 0 cannot start the coordinator at localhost:{port} (Address already in use): "
                    f"port {port} is in use on this machine: stop what holds it (e.g. an earlier run still "
                    "running), or give every process another port")


def test_an_address_of_another_machine_is_refused_on_process_0(tmp_path):
    line = _error_line(_run(_command(tmp_path, "192.0.2.1:1234", 0)))  # TEST-NET-1: never this machine's
    assert line == ("error: process 0 cannot start the coordinator at 192.0.2.1:1234 (Cannot assign requested "
                    "address): 192.0.2.1 is not an address of this machine: run process 0 on the machine the address "
                    "names, or give its address")


def test_processes_that_disagree_on_the_count_each_get_one_line(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path, f"localhost:{port}", i, *flags), cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, flags in ((0, ()), (1, ("--num_processes=3",)))]
    (code0, err0), (code1, err1) = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
    assert _error_line((code1, err1)) == (
        f"error: the coordinator at localhost:{port} did not let process 1 join: process 0 runs with "
        "--num_processes=2, this one with 3: give every process the same --num_processes")
    assert _error_line((code0, err0)).startswith("error: process(es) [1] of 2 did not join within the 3 s")


JOIN = textwrap.dedent("""
    import sys
    from cnn_jax.train import sharding
    sharding.maybe_initialize_distributed(sys.argv[1], 2, int(sys.argv[2]), initialization_timeout_s=60)
    import jax
    print(jax.process_index(), jax.process_count(), len(jax.devices()), flush=True)
""")


def test_two_processes_that_agree_join_and_see_both_devices():
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", JOIN, address, str(i)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    for i, proc in zip((1, 0), procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert out.split() == [str(i), "2", "2"]
