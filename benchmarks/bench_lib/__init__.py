"""The parts of `benchmarks/benchmark.py`: `plan` says which records to run, and one child process per record
runs `worker`, which times it; `jax_runner`, `torch_runner` (eager and `torch.compile`) and `keras_runner` build
that framework's model, optimizer and step. What the runners share lives here: the optimizer settings, the record's
spec, the random batch, and the parameter-count check that keeps the frameworks on the same architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np

# One optimizer for every framework: SGD with momentum 0.9, learning rate 0.01, cross-entropy loss.
LEARNING_RATE = 0.01
MOMENTUM = 0.9
SEED = 0


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What one child process measures; sent to it as JSON.

    `expected_params` is the trainable-parameter count of the cnn_jax model the framework's model
    mirrors (the Keras variant for the Keras applications); `mean` and `std` are that model's
    input normalization, which the hand-written torch and Keras models copy.
    """
    framework: str
    model: str
    mode: str  # "train" or "infer"
    batch_size: int
    num_classes: int
    input_shape: Tuple[int, int, int]
    expected_params: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    steps: int
    warmup_steps: int
    min_seconds: float
    keras_jit_compile: bool
    dtype: str = "float32"  # compute dtype; "bfloat16" keeps float32 params (mixed precision)
    compilation_cache_dir: str = ""  # cnn_jax: JAX's persistent compilation cache here ("": off, a cold compile)

    @classmethod
    def from_dict(cls, values: dict) -> "RecordSpec":
        return cls(**{**values, "input_shape": tuple(values["input_shape"]),
                      "mean": tuple(values["mean"]), "std": tuple(values["std"])})


class Runner(NamedTuple):
    """`step()` runs one train or inference step (it may return before the work is done, as
    JAX dispatches asynchronously); `wait()` blocks until every step started has finished."""
    step: Callable[[], None]
    wait: Callable[[], None]


def random_batch(spec: RecordSpec) -> Tuple[np.ndarray, np.ndarray]:
    """NHWC float32 images in [0, 1] and int32 labels: the same batch for every framework."""
    rng = np.random.default_rng(SEED)
    images = rng.uniform(size=(spec.batch_size, *spec.input_shape)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, spec.batch_size).astype(np.int32)
    return images, labels


def check_params(spec: RecordSpec, count: int, where: Optional[str] = None) -> None:
    """Raises unless the framework's model has as many trainable parameters as cnn_jax's."""
    if count != spec.expected_params:
        raise AssertionError(
            f"{spec.framework} {spec.model} ({where or 'benchmark model'}) has {count:,} trainable "
            f"parameters but cnn_jax's has {spec.expected_params:,}: the two architectures differ; "
            "make the reference model mirror the cnn_jax one before comparing their speed.")
