"""Measures one benchmark record in this process and prints it: `python -m bench_lib.worker SPEC_JSON`.

`benchmarks/benchmark.py` starts one such process per record, so that `peak_mem_mb` (this process's
`ru_maxrss`: the framework's imports, compiling, the model, its optimizer state and the activations of
one step) belongs to that record alone, and no framework's thread pools or caches touch another's.

Timing: the first step alone gives `compile_s` (tracing and compiling included, where the framework
compiles); then `warmup_steps` more steps are run untimed; then rounds of `steps` steps are timed,
until at least `min_seconds` have passed, and `images_per_sec` is the images of the timed steps
over their time.
"""
from __future__ import annotations

import importlib
import json
import resource
import sys
import time

from bench_lib import RecordSpec, Runner

RESULT_PREFIX = "BENCHMARK_RECORD "
RUNNERS = {"cnn_jax": "bench_lib.jax_runner", "torch": "bench_lib.torch_runner",
           "torch_compile": "bench_lib.torch_runner", "keras": "bench_lib.keras_runner"}


def measure(runner: Runner, spec: RecordSpec) -> dict:
    """`images_per_sec`, `compile_s` and `peak_mem_mb` of `runner`'s step."""
    start = time.perf_counter()
    runner.step()
    runner.wait()
    compile_s = time.perf_counter() - start
    for _ in range(spec.warmup_steps):
        runner.step()
    runner.wait()
    timed_steps, start = 0, time.perf_counter()
    while True:
        for _ in range(spec.steps):
            runner.step()
        runner.wait()
        timed_steps += spec.steps
        elapsed = time.perf_counter() - start
        if elapsed >= spec.min_seconds:
            break
    return {
        "images_per_sec": timed_steps * spec.batch_size / elapsed,
        "compile_s": compile_s,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


def main(argv: list) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: python -m bench_lib.worker SPEC_JSON (got {len(argv) - 1} arguments)")
    spec = RecordSpec.from_dict(json.loads(argv[1]))
    runner = importlib.import_module(RUNNERS[spec.framework]).build(spec)
    print(RESULT_PREFIX + json.dumps(measure(runner, spec)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
