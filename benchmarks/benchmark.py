"""Training and inference speed of cnn_jax beside PyTorch (eager and `torch.compile`) and Keras 3 (TensorFlow
backend), same models, in float32 and in bfloat16 mixed precision.

    python benchmarks/benchmark.py --models=simple_cnn,resnet20 --frameworks=cnn_jax,torch,torch_compile,keras \\
        --batch_size=128 --dtype=float32,bfloat16 --out=benchmark.json

prints a table and writes `--out`: a JSON list of records with the keys `framework`, `model`, `mode` ("train" or
"infer"), `dtype`, `batch_size`, `images_per_sec`, `compile_s`, `peak_mem_mb` and `flops_fraction`. The machine, the
versions, the measured matmul speed and the model FLOPs go to the table's header and to `<out minus .json>.meta.json`,
and the figure of BENCHMARKS.md (`bench_lib/figure.py`: each framework's images/s relative to the fastest peer, per
model and mode) to `<out minus .json>.png`. `--plot=a.json,b.json --figure=f.png` draws that figure from records
written before (a training run and inference runs at other batch sizes, say), and measures nothing.

The models: `simple_cnn` (28x28x1, 10 classes) and `resnet20` (32x32x3, 10 classes) at `--batch_size`;
`mobilenet_v2` and `resnet50` (224x224x3, 1000 classes) at `--batch_size_224`, smaller because an image at 224x224
costs 8x (mobilenet_v2) to 100x (resnet50) the FLOPs of a resnet20 image. The same architecture runs in every
framework: torch and Keras versions of simple_cnn and resnet20 are written out in `benchmarks/bench_lib/` to mirror
cnn_jax's; mobilenet_v2 and resnet50 come from torchvision and `keras.applications` (weights=None). Every child
process asserts that its model's trainable-parameter count
equals cnn_jax's (for Keras' applications, that of cnn_jax's `variant="keras"`). One optimizer for all: SGD,
momentum 0.9, learning rate 0.01, softmax cross-entropy on logits.

`--dtype=bfloat16` runs each framework's mixed precision, float32 params and optimizer with bf16 compute:
cnn_jax's `--half_precision` model (bf16 convolutions on oneDNN's bf16 kernels where the CPU has them), PyTorch's
`torch.autocast("cpu", torch.bfloat16)` around the forward pass and loss, Keras' "mixed_bfloat16" policy. The table
gives each record against torch eager and against the fastest peer (torch, torch_compile, keras) at the same model,
mode and dtype.

How each framework runs (the path its users run):
  cnn_jax  the training engine's own jitted `train_step` (`cnn_jax.train.make_train_step`, state donated) and a
           jitted evaluation apply (`state.apply_fn`); the persistent compilation cache is off, so compiles are cold.
           XLA_FLAGS and other JAX settings in the environment apply.
  torch    eager, NCHW, default threads; `zero_grad / cross_entropy / backward / step`, and `inference_mode`.
  torch_compile  the same model and step with the model wrapped in `torch.compile` (inductor's C++/OpenMP CPU
           kernels, the backward through AOTAutograd); `compile_s` is its first step, which compiles.
  keras    `model.train_on_batch` / `predict_on_batch` on tf tensors, Keras' own compiled step functions;
           `--keras_jit_compile` picks XLA (True; what Keras' "auto" picks on this backend) or a plain
           `tf.function` graph over TensorFlow's oneDNN kernels (False, the default: the faster of the two in a
           smoke comparison on the 2-core CPU, resnet20 at batch 32: 1.3-1.5x XLA's training throughput and half
           its compile time; measured on a loaded machine, so worth rechecking with --keras_jit_compile).

What is measured: each record (framework, model, mode) runs in its own child process (`bench_lib/worker.py`),
so `peak_mem_mb` is that process's peak resident memory (`ru_maxrss`: the framework's imports, compiling, the
model, the optimizer state and one step's activations). `compile_s` is the time of the first step, tracing and compiling
included. `--warmup_steps` more steps run untimed; then rounds of `--steps` steps are timed until at least
`--min_seconds` have passed, and `images_per_sec` is timed images over timed seconds. `flops_fraction` is the
model FLOP/s achieved divided by the machine's float32 matmul FLOP/s (for bfloat16 records too), measured once per run
with numpy (its BLAS,
faster than XLA's dot on the 2-core CPU; a 2048x2048 product, best of 10). Model FLOPs per image come from XLA's
cost analysis of the cnn_jax forward pass at batch 1: 2 FLOPs per multiply-add, where XLA counts a convolution's
multiply-adds with real inputs only, not with its zero padding (so resnet20 has 74.8 MFLOPs, not the 81 of
counting padding); Keras' applications use the `variant="keras"` model, whose ResNet-50 strides in a different
conv. A train step counts 3x the forward pass (forward, input gradients, weight gradients), the usual convention.

Run it on an otherwise idle machine: PyTorch's OpenMP threads wait for each other at every op, so when another
process holds a core its throughput collapses (resnet20 training on the 2-core CPU under load: 30-75 images/s with
2 threads, 170-180 with 1), and every other figure moves too. The default run (all four models, all three
frameworks before torch_compile was added, both modes, float32) took about 25 minutes on the 2-core CPU (estimated
from smoke runs under load), most of it cnn_jax's and torch's 224x224 training steps; torch_compile adds its
compiles, and each extra dtype repeats the lot. `--steps=2 --warmup_steps=1 --min_seconds=0` makes a smoke run.

Memory pages: cnn_jax's entry points run with glibc's transparent-huge-page tunable (`cnn_jax.huge_pages`), which
spares XLA:CPU's per-step buffers thousands of page faults a step. The tunable speeds PyTorch and Keras up too, so by
default (`--huge_pages=all`) every framework's child gets it: the same environment for all. `--huge_pages=cnn_jax`
runs each as its users run it out of the box, `none` runs all without it.

A framework that is not installed is skipped with a note. A record that fails or runs past `--timeout_s` is
reported, the others are still written, and the command exits with status 1.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from bench_lib import RecordSpec, figure
from bench_lib.plan import DTYPES, FRAMEWORKS, MODES, NUM_CLASSES, is_imagenet, plan
from bench_lib.worker import RESULT_PREFIX

from cnn_jax import cli, huge_pages, models, ops

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
# The cnn_jax variant each framework's model mirrors (params to assert, FLOPs to count); default otherwise.
VARIANTS = {("keras", "mobilenet_v2"): {"variant": "keras"}, ("keras", "resnet50"): {"variant": "keras"}}
TRAIN_FLOPS_PER_FORWARD = 3  # forward + input gradients + weight gradients
MATMUL_SIZE, MATMUL_REPEATS = 2048, 10
RECORD_KEYS = ("framework", "model", "mode", "dtype", "batch_size", "images_per_sec", "compile_s", "peak_mem_mb",
               "flops_fraction")
MEASURED_KEYS = RECORD_KEYS[5:]
CACHED = ("cnn_jax", "torch_compile")  # the frameworks with on-disk compilation caches
VERSIONED = ("jax", "jaxlib", "flax", "numpy", "torch", "torchvision", "tensorflow", "tensorflow-cpu", "keras")



@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What to measure, and how long.

    Attributes:
      models: models to run, from simple_cnn, resnet20, mobilenet_v2, resnet50.
      frameworks: frameworks to run, from cnn_jax, torch, torch_compile, keras.
      modes: modes to run: train, infer or both.
      dtype: compute dtypes: float32, bfloat16 (mixed precision) or both.
      batch_size: batch size of simple_cnn and resnet20 (28x28, 32x32 inputs).
      batch_size_224: batch size of mobilenet_v2 and resnet50 (224x224).
      steps: timed steps per round; rounds repeat until --min_seconds have passed.
      warmup_steps: untimed steps after the first (compiling) step.
      min_seconds: least timed seconds per record (0: one round of --steps).
      timeout_s: seconds after which a record's child process is killed.
      keras_jit_compile: compile Keras' steps with XLA (True) or run them as TensorFlow graphs (False).
      huge_pages: whose processes run with glibc's transparent-huge-page tunable: all frameworks (the same
        environment for every one), cnn_jax only (as its entry points run it, the peers as theirs do), or none.
      compilation_cache: "cold" measures each record in one fresh process, cnn_jax compiling from scratch;
        "warm" measures cnn_jax and torch_compile records in a second process after a first has filled their
        on-disk compilation caches (JAX's in a temporary directory; inductor's), as a repeated run meets them.
      out: where to write the JSON list of records; its metadata go beside it (`<out minus .json>.meta.json`),
        and its figure too (`<out minus .json>.png`) unless --figure names another path.
      plot: draw the figure of these records files (what --out wrote; several are merged into one figure) at
        --figure, and measure nothing.
      figure: where to draw the figure (PNG; default: beside --out).
    """
    models: tuple[str, ...] = tuple(NUM_CLASSES)
    frameworks: tuple[str, ...] = tuple(FRAMEWORKS)
    modes: tuple[str, ...] = tuple(MODES)
    dtype: tuple[str, ...] = ("float32",)
    batch_size: int = 128
    batch_size_224: int = 16
    steps: int = 10
    warmup_steps: int = 2
    min_seconds: float = 10.0
    timeout_s: float = 1200.0
    keras_jit_compile: bool = False
    huge_pages: Literal["all", "cnn_jax", "none"] = "all"
    compilation_cache: Literal["cold", "warm"] = "cold"
    out: str = "benchmark.json"
    plot: tuple[str, ...] = ()
    figure: str = ""

    def __post_init__(self):
        for name, valid in (("models", tuple(NUM_CLASSES)), ("frameworks", FRAMEWORKS), ("modes", MODES),
                            ("dtype", DTYPES)):
            values = getattr(self, name)
            unknown = [value for value in values if value not in valid]
            if unknown or not values:
                problem = f"unknown {', '.join(unknown)}" if unknown else "empty"
                raise ValueError(f"--{name}={','.join(values)}: {problem}; choose from {', '.join(valid)}.")
        for name, least in (("batch_size", 1), ("batch_size_224", 1), ("steps", 1), ("warmup_steps", 0),
                            ("min_seconds", 0), ("timeout_s", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name}={getattr(self, name)}: use at least {least}.")


@dataclasses.dataclass(frozen=True)
class Reference:
    """What cnn_jax's model tells the benchmark about one (framework, model): trainable parameters, forward FLOPs
    per image, and the input normalization the hand-written references copy."""
    params: int
    forward_flops: float
    mean: tuple
    std: tuple


def matmul_flops_per_sec() -> float:
    """float32 FLOP/s of a square numpy matmul (numpy's BLAS, all cores): the best of a few repeats."""
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(size=(MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32) for _ in range(2))
    a @ b  # warm the BLAS threads up
    best = float("inf")
    for _ in range(MATMUL_REPEATS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE ** 3 / best


@functools.lru_cache(maxsize=None)
def reference(model_name: str, variant: tuple = ()) -> Reference:
    """Parameters (jax.eval_shape) and forward FLOPs (XLA's cost analysis of the forward pass at batch 1)
    of cnn_jax's `model_name`; nothing is compiled or computed."""
    model = models.get_model(model_name, NUM_CLASSES[model_name], **dict(variant))
    image = jax.ShapeDtypeStruct((1, *models.model_spec(model_name).input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    # Lowered for TPU, where every convolution stays XLA's and is counted: XLA has no cost model for the CPU
    # path's oneDNN custom calls. Lowering needs no TPU.
    costs = forward.trace(variables, image).lower(lowering_platforms=("tpu",)).cost_analysis()
    return Reference(ops.count_params(variables["params"]), float(costs["flops"]), tuple(model.mean),
                     tuple(model.std))


def reference_for(framework: str, model: str) -> Reference:
    return reference(model, tuple(VARIANTS.get((framework, model), {}).items()))


def record_environment(framework: str, huge_pages_for: str) -> dict:
    """This process's environment, with glibc's huge-page tunable for the frameworks `--huge_pages` names and
    without it for the others: any `glibc.malloc.hugetlb` setting of this process's own is dropped, the flag
    decides."""
    name = huge_pages.TUNABLE.split("=")[0]
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and t.split("=")[0] != name]
    plain = {**os.environ, "GLIBC_TUNABLES": ":".join(tunables)}
    if huge_pages_for in ("all", framework):
        return huge_pages.environment(plain) or plain
    return plain


def run_record(spec: RecordSpec, timeout_s: float, env: dict) -> tuple[Optional[dict], str]:
    """Measures one record in a child process: its measurements, or None and why it failed."""
    command = [sys.executable, "-m", "bench_lib.worker", json.dumps(dataclasses.asdict(spec))]
    try:
        child = subprocess.run(command, cwd=BENCHMARKS_DIR, capture_output=True, text=True, timeout=timeout_s,
                               env=env)
    except subprocess.TimeoutExpired:
        return None, f"ran past --timeout_s={timeout_s:g}"
    for line in child.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):]), ""
    tail = [line for line in child.stderr.splitlines() if line.strip()][-5:]
    return None, f"exit status {child.returncode}:\n    " + "\n    ".join(tail)


def make_record(spec: RecordSpec, measured: dict, forward_flops: float, matmul_flops: float) -> dict:
    """The JSON record: the child's measurements (to 4 significant digits) and the FLOPs fraction they reach."""
    model_flops = forward_flops * (TRAIN_FLOPS_PER_FORWARD if spec.mode == "train" else 1)
    values = {**measured, "flops_fraction": model_flops * measured["images_per_sec"] / matmul_flops}
    return {"framework": spec.framework, "model": spec.model, "mode": spec.mode, "dtype": spec.dtype,
            "batch_size": spec.batch_size, **{key: float(f"{values[key]:.4g}") for key in MEASURED_KEYS}}


def blas_name() -> str:
    """The BLAS numpy's matmul runs on, as numpy's build records it."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (KeyError, TypeError, ValueError):
        return "BLAS unknown"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or platform.machine())
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _read_lines(path: str) -> list:
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []


def format_table(records: list, meta: dict) -> str:
    """The records as a text table, under a header that says where and how they were measured."""
    info = meta["machine"]
    lines = [f"cnn_jax benchmark, {meta['date']}: {info['cpu']} ({info['cpu_count']} CPUs), {info['platform']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"float32 matmul: {meta['matmul_gflops']:.1f} GFLOP/s ({meta['matmul_method']})",
             f"model FLOPs: {meta['flops_method']}",
             f"steps: first (compile_s), {meta['flags']['warmup_steps']} warmup, then rounds of "
             f"{meta['flags']['steps']} timed for at least {meta['flags']['min_seconds']:g} s; "
             f"keras jit_compile={meta['flags']['keras_jit_compile']}; glibc huge-page tunable for "
             f"{meta['flags']['huge_pages']}; compilation caches {meta['flags']['compilation_cache']}"]
    key = figure.group_key
    torch_speed = {key(r): r["images_per_sec"] for r in records if r["framework"] == "torch"}
    vs_fastest_peer = figure.relative_to_fastest_peer(records)
    def times(value):
        return "-" if value is None else f"{value:.2f}x"
    header = ("framework", "model", "mode", "dtype", "batch", "images/s", "vs torch", "vs fastest peer",
              "compile s", "peak MB", "FLOPs frac")
    rows = [header]
    for r in records:
        rows.append((r["framework"], r["model"], r["mode"], r["dtype"], str(r["batch_size"]),
                     f"{r['images_per_sec']:.1f}",
                     times(r["images_per_sec"] / torch_speed[key(r)] if torch_speed.get(key(r)) else None),
                     times(vs_fastest_peer.get(key(r), {}).get(r["framework"])), f"{r['compile_s']:.2f}",
                     f"{r['peak_mem_mb']:.0f}", f"{r['flops_fraction']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    lines += [f"note: {note}" for note in meta["notes"]]
    return "\n".join(lines)


def record_spec(bench: Benchmark, framework: str, model: str, mode: str, dtype: str = "float32",
                cache_dir: str = "") -> RecordSpec:
    ref = reference_for(framework, model)
    return RecordSpec(framework=framework, model=model, mode=mode,
                      batch_size=bench.batch_size_224 if is_imagenet(model) else bench.batch_size,
                      num_classes=NUM_CLASSES[model], input_shape=models.model_spec(model).input_shape,
                      expected_params=ref.params, mean=ref.mean, std=ref.std, steps=bench.steps,
                      warmup_steps=bench.warmup_steps, min_seconds=bench.min_seconds,
                      keras_jit_compile=bench.keras_jit_compile, dtype=dtype, compilation_cache_dir=cache_dir)


def metadata(bench: Benchmark, planned: list, matmul: float, notes: list) -> dict:
    """Where, when and how the records were measured: the sidecar file and the table's header."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": machine(),
        "matmul_gflops": matmul / 1e9,
        "matmul_method": f"numpy {np.__version__} ({blas_name()}) float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmul, "
                         f"best of {MATMUL_REPEATS}",
        "flops_method": "XLA cost analysis of the cnn_jax forward pass at batch 1 (padding not counted); train = "
                        f"{TRAIN_FLOPS_PER_FORWARD} x forward",
        "forward_gflops_per_image": {f"{f} {m}": reference_for(f, m).forward_flops / 1e9
                                     for f, m in dict.fromkeys((f, m) for f, m, *_ in planned)},
        "flags": {name: list(value) if isinstance(value, tuple) else value
                  for name, value in dataclasses.asdict(bench).items()},
        "notes": notes,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    try:
        bench = cli.parse(Benchmark())
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    png = bench.figure or figure.beside(bench.out, ".png")
    if bench.plot:
        try:
            print(figure.draw(*figure.load(bench.plot), png))
        except ValueError as error:
            sys.exit(f"error: {error}")
        return 0
    planned, notes = plan(bench.models, bench.frameworks, bench.modes, dtypes=bench.dtype)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    matmul = matmul_flops_per_sec()
    records, failures = [], 0
    warm = bench.compilation_cache == "warm"
    cache = tempfile.TemporaryDirectory(prefix="cnn_jax_benchmark_cache_")
    for framework, model, mode, dtype in planned:
        spec = record_spec(bench, framework, model, mode, dtype, cache.name if warm else "")
        print(f"{framework} {model} {mode} {dtype} (batch {spec.batch_size}) ...", file=sys.stderr, flush=True)
        env = record_environment(framework, bench.huge_pages)
        measured, error = run_record(spec, bench.timeout_s, env)
        if measured is not None and warm and framework in CACHED:  # the first run filled the caches
            measured, error = run_record(spec, bench.timeout_s, env)
        if measured is None:
            failures += 1
            notes.append(f"failed {framework} {model} {mode} {dtype}: {error}")
            print(f"  failed: {error}", file=sys.stderr)
            continue
        records.append(make_record(spec, measured, reference_for(framework, model).forward_flops, matmul))
    cache.cleanup()
    meta = metadata(bench, planned, matmul, notes)
    os.makedirs(os.path.dirname(os.path.abspath(bench.out)), exist_ok=True)
    with open(bench.out, "w") as f:
        json.dump(records, f, indent=1)
    with open(figure.beside(bench.out, ".meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(format_table(records, meta))
    if figure.relative_to_fastest_peer(records):
        print(f"figure: {figure.draw(records, [meta], png)}")
    return 1 if failures else 0


if __name__ == "__main__":
    cli.define_flags(Benchmark())
    app.run(main)
