"""Inference speed of every runtime of a portable export, beside PyTorch eager: latency and throughput.

    python benchmarks/bench_inference.py --models=simple_cnn,resnet20 --out=bench_inference.json

For each model, a randomly initialized export (speed does not depend on the weights) is written to a temporary
workdir with every format (``cnn_jax.export.portable``). Each runtime is then measured in a fresh child process:
latency at batch 1 (median of ``--latency_runs`` calls after warm-up) and throughput at batch 64 (images/s over
at least ``--min_seconds``), with PyTorch eager (``benchmarks/bench_lib/torch_runner``'s mirror of the model, NCHW,
``model.eval()`` under ``torch.inference_mode()``) as the reference, on every core (``torch``) and on one
(``torch_1thread``: on a shared machine OpenMP's threads wait for each other when one is descheduled). Start-up is the
wall time of a whole
``scripts/predict.py`` process that classifies one image with that runtime. One JSON object per line goes to
``--out``, and a table to stdout.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402

from cnn_jax import cli  # noqa: E402

SHAPES = {"simple_cnn": (28, 28, 1), "resnet20": (32, 32, 3), "mobilenet_v2": (32, 32, 3), "cnn3": (32, 32, 3)}
RUNTIMES = ("torch", "torch_1thread", "jax", "stablehlo", "tf", "tflite", "tflite_dynamic_range", "tflite_int8",
            "onnx")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What to measure.

    Attributes:
      models: Models to measure (simple_cnn, resnet20, mobilenet_v2, cnn3), comma-separated.
      runtimes: Runtimes to measure, comma-separated (torch is PyTorch eager on every core, torch_1thread on one).
      latency_runs: Batch-1 calls whose median is the latency.
      min_seconds: Least time spent on the batch-64 throughput measurement.
      out: File to write one JSON line per (model, runtime) to.
      child: Internal: measure one runtime of one model in this process (runtime,model,workdir).
    """
    models: tuple[str, ...] = ("simple_cnn", "resnet20")
    runtimes: tuple[str, ...] = RUNTIMES
    latency_runs: int = 200
    min_seconds: float = 3.0
    out: str = "bench_inference.json"
    child: str = ""


def _runner(runtime: str, model_name: str, workdir: str):
    """``(images NHWC float32) -> logits`` for ``runtime``, built as a user of that runtime would."""
    import numpy as np

    if runtime in ("torch", "torch_1thread"):
        import torch
        from bench_lib import torch_runner

        from cnn_jax.export import read_meta

        meta = read_meta(os.path.join(workdir, "export"), "")
        model = torch_runner.make_model(_torch_spec(model_name, meta)).eval()
        torch.set_num_threads(1 if runtime == "torch_1thread" else os.cpu_count())

        def logits(images):
            with torch.inference_mode():
                return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
        return logits
    from cnn_jax.export import runtime as runtime_lib

    name, _, variant = runtime.partition("_")
    if name in runtime_lib.JAX_FREE:
        runtime_lib.keep_jax_out()
    return runtime_lib.load_runtime(workdir, name, variant or "float32").logits


def _torch_spec(model_name, meta):
    import jax
    import numpy as np
    from bench_lib import RecordSpec

    from cnn_jax.ops import count_params

    model = meta.build()
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, *meta.image_shape), np.float32))
    return RecordSpec(framework="torch", model=model_name, mode="infer", batch_size=1,
                      num_classes=len(meta.class_names), input_shape=meta.image_shape,
                      expected_params=count_params(shapes["params"]), mean=tuple(model.mean), std=tuple(model.std),
                      steps=0, warmup_steps=0, min_seconds=0.0, keras_jit_compile=False)


def measure(settings: BenchSettings) -> dict:
    import numpy as np

    runtime, model_name, workdir = settings.child.split(",")
    logits = _runner(runtime, model_name, workdir)
    shape = SHAPES[model_name]
    rng = np.random.default_rng(0)
    one, many = (rng.random((b, *shape), np.float32) for b in (1, 64))
    for _ in range(10):
        logits(one)
    times = []
    for _ in range(settings.latency_runs):
        start = time.perf_counter()
        logits(one)
        times.append(time.perf_counter() - start)
    logits(many)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < settings.min_seconds or count < 3:
        logits(many)
        count += 1
    elapsed = time.perf_counter() - start
    return {"model": model_name, "runtime": runtime, "latency_ms_b1": 1e3 * float(np.median(times)),
            "images_per_s_b64": 64 * count / elapsed}


def _startup(workdir: str, runtime: str, image: str) -> float:
    name, _, variant = runtime.partition("_")
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"), f"--workdir={workdir}",
                    f"--runtime={name}", f"--tflite_variant={variant or 'float32'}", image],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    return time.perf_counter() - start


def _prepare(model_name: str, directory: str) -> tuple[str, str]:
    """A random export of ``model_name`` with every format, and one image file to classify."""
    import jax
    import numpy as np
    from PIL import Image

    from cnn_jax import export
    from cnn_jax.models import get_model

    shape = SHAPES[model_name]
    workdir = os.path.join(directory, model_name)
    model = get_model(model_name, 10)
    variables = model.init(jax.random.key(0), np.zeros((1, *shape), np.float32))
    export.save_export(workdir, model_name, {}, variables, [str(i) for i in range(10)], shape)
    calibration = np.random.default_rng(1).integers(0, 256, (100, *shape), dtype=np.uint8)
    for fmt in ("stablehlo", "saved_model", "onnx"):
        export.export_format(workdir, fmt)
    for variant in ("float32", "dynamic_range", "int8"):
        export.export_format(workdir, "tflite", tflite_variant=variant, calibration_images=calibration)
    image = os.path.join(directory, f"{model_name}.png")
    pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(image)
    return workdir, image


def main(argv) -> None:
    del argv
    settings = cli.parse(BenchSettings())
    if settings.child:
        print(json.dumps(measure(settings)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for model_name in settings.models:
            workdir, image = _prepare(model_name, directory)
            for runtime in settings.runtimes:
                proc = subprocess.run([sys.executable, __file__, f"--child={runtime},{model_name},{workdir}",
                                       f"--latency_runs={settings.latency_runs}",
                                       f"--min_seconds={settings.min_seconds}"],
                                      capture_output=True, text=True, check=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["startup_s"] = None if runtime.startswith("torch") else _startup(workdir, runtime, image)
                row["load_average"] = os.getloadavg()[0]
                rows.append(row)
                print(f"{model_name:12s} {runtime:22s} {row['latency_ms_b1']:8.3f} ms  "
                      f"{row['images_per_s_b64']:9.0f} img/s  start-up {row['startup_s'] or 0:5.2f} s  "
                      f"load {row['load_average']:.1f}", flush=True)
    with open(settings.out, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    cli.define_flags(BenchSettings())
    app.run(main)
