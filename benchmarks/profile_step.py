"""Where a jitted training or inference step's time goes on the CPU: the XLA thunks of one step, grouped by what
they compute.

    python benchmarks/profile_step.py [--model=resnet20] [--mode=train] [--batch_size=128] [--dtype=float32] \\
        [--steps=10]

Runs the training engine's own `train_step` (SGD momentum, as `benchmarks/benchmark.py` does), or for
`--mode=infer` the model's evaluation forward pass (`train=False`, as the benchmark's inference), under `jax.profiler`,
reads the per-thunk events of the trace (XLA:CPU names each after its HLO instruction) and classifies each
instruction from the compiled HLO: oneDNN convolutions (the `cnn_jax_conv` custom call, by mode: forward, data
gradient, weight gradient), XLA convolutions, fusions that reduce (BatchNorm statistics and their gradients,
pooling means, the loss), purely elementwise fusions (normalization, ReLU, residual adds, their gradients, the
optimizer update), layout copies, matmuls, the rest.
Prints milliseconds per step per group and the costliest instructions. Thunk times are summed, so where XLA runs
independent thunks at once on different threads the sum can exceed the step's wall time, which is printed too.
"""
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from absl import app

from cnn_jax import cli, freed_memory, huge_pages, models
from cnn_jax.train import TrainConfig, create_train_state, make_optimizer, make_train_step


@dataclasses.dataclass(frozen=True)
class Profile:
    """What to profile.

    Attributes:
      model: zoo model to profile.
      mode: "train" (a training step) or "infer" (an evaluation forward pass).
      batch_size: images per step.
      dtype: compute dtype (params stay float32).
      steps: profiled steps (after 3 unprofiled ones).
      top: costliest instructions to list.
    """
    model: str = "resnet20"
    mode: Literal["train", "infer"] = "train"
    batch_size: int = 128
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: int = 10
    top: int = 12

CONV_MODES = ("forward", "data gradient", "weight gradient")  # the custom call's `mode` attribute
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")
COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> tuple:
    """({instruction: (opcode, rest of line)}, {computation: set of opcodes in it}) of an HLO module's text."""
    instructions, bodies, current = {}, collections.defaultdict(set), None
    for line in text.splitlines():
        if (match := COMPUTATION.match(line)) and "=" not in line.split("{")[0]:
            current = match.group(1)
        elif match := INSTRUCTION.match(line):
            name, opcode, rest = match.groups()
            instructions[name] = (opcode, rest)
            if current:
                bodies[current].add(opcode)
    return instructions, bodies


def group_of(name: str, instructions: dict, bodies: dict) -> str:
    """What an HLO instruction computes, as one of the groups of the module docstring."""
    opcode, rest = instructions.get(name, ("?", ""))
    if opcode == "custom-call":
        mode = re.search(r"mode = (\d)", rest)
        if "cnn_jax_conv_fused" in rest:
            return "oneDNN convolution with its epilogue (inference)"
        if "cnn_jax_conv" in rest and mode:
            return f"oneDNN convolution, {CONV_MODES[int(mode.group(1))]}"
        return "other custom call"
    if opcode == "convolution":
        return "convolution (XLA)"
    if opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = bodies.get(called.group(1), set()) if called else set()
        if "convolution" in body:
            return "convolution (XLA)"
        if "dot" in body:
            return "matmul (dot)"
        if body & {"reduce", "reduce-window"}:
            return "fusion with reductions (BN statistics, pools, loss)"
        return "elementwise fusion (BN apply, ReLU, adds, update)"
    if opcode in ("copy", "transpose"):
        return "layout copies"
    if opcode == "dot":
        return "matmul (dot)"
    return f"other ({opcode})"


def main(argv):
    del argv
    opts = cli.parse(Profile())
    jax.config.update("jax_enable_compilation_cache", False)
    freed_memory.release_after_compiles()  # as the training engine runs
    dtype = jnp.dtype(opts.dtype)
    model = models.get_model(opts.model, 10 if opts.model in ("resnet20", "simple_cnn") else 1000, dtype=dtype)
    shape = models.model_spec(opts.model).input_shape
    config = TrainConfig(epochs=1, learning_rate=0.01, optimizer="sgd", momentum=0.9, schedule="constant",
                         progress_bar=False, tensorboard=False)
    state = create_train_state(model, make_optimizer(config, steps_per_epoch=1), shape, 0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(opts.batch_size, *shape)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, opts.batch_size), jnp.int32)}
    if opts.mode == "train":
        step = jax.jit(make_train_step(), donate_argnums=0)
    else:
        step = jax.jit(lambda state, batch: (state, state.apply_fn(state.variables, batch["image"], train=False)))
    step_call = step.lower(state, batch).compile()
    output = 0 if opts.mode == "train" else 1  # the new state, or the logits
    def run(state):
        return step_call(state, batch)[output]
    instructions, bodies = parse_hlo(step_call.as_text())
    for _ in range(3):
        jax.block_until_ready(run(state) if opts.mode == "infer" else (state := run(state)))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(opts.steps):
            out = run(state)
            state = out if opts.mode == "train" else state
        jax.block_until_ready(out)
        wall = (time.perf_counter() - start) / opts.steps * 1e3
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    per_name = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in instructions:
            per_name[event["name"]] += event["dur"] / 1e3 / opts.steps  # microseconds -> ms per step
    per_group = collections.Counter()
    for name, ms in per_name.items():
        per_group[group_of(name, instructions, bodies)] += ms
    total = sum(per_group.values())
    print(f"{opts.model} {opts.mode} step, batch {opts.batch_size}, {opts.dtype}, backend {jax.default_backend()}: "
          f"{wall:.1f} ms per step wall, {total:.1f} ms of thunks per step ({len(per_name)} instructions timed)")
    for group, ms in per_group.most_common():
        print(f"  {group:<56}{ms:>9.1f} ms  {ms / total:6.1%}")
    print("costliest instructions:")
    for name, ms in per_name.most_common(opts.top):
        print(f"  {name:<40}{group_of(name, instructions, bodies):<56}{ms:>9.2f} ms")


if __name__ == "__main__":
    huge_pages.reexec()  # measured as the experiments run: with the huge-page tunable (cnn_jax.huge_pages)
    cli.define_flags(Profile())
    app.run(main)
