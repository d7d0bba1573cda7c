"""What the benchmark can run: its models, frameworks, modes and dtypes, and the records a missing package rules
out."""
from __future__ import annotations

import importlib.util
from typing import Callable, Sequence

from cnn_jax import models

# The benchmark's models and the classes in their heads; input shapes come from the model registry.
NUM_CLASSES = {"simple_cnn": 10, "resnet20": 10, "mobilenet_v2": 1000, "resnet50": 1000}
FRAMEWORKS = ("cnn_jax", "torch", "torch_compile", "keras")
MODES = ("train", "infer")
# float32, or bfloat16 compute with float32 params: cnn_jax's --half_precision (a bf16 model), PyTorch's CPU
# autocast, Keras' "mixed_bfloat16" policy.
DTYPES = ("float32", "bfloat16")
# The packages each framework's records need; torchvision only for the ImageNet models.
PACKAGES = {"cnn_jax": ("jax", "flax", "optax"), "torch": ("torch",), "torch_compile": ("torch",),
            "keras": ("keras", "tensorflow")}
IMAGENET_PACKAGES = {"torch": ("torchvision",), "torch_compile": ("torchvision",)}


def is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def is_imagenet(model: str) -> bool:
    """Whether `model` is designed for 224x224 inputs (and so runs at the smaller --batch_size_224)."""
    return models.model_spec(model).input_shape[0] >= 224


def plan(model_names: Sequence[str], frameworks: Sequence[str], modes: Sequence[str],
         installed: Callable[[str], bool] = is_installed, dtypes: Sequence[str] = ("float32",)) -> tuple[list, list]:
    """The (framework, model, mode, dtype) records to run, grouped by model, then framework, then dtype, and a note
    for each (framework, model) skipped because a package it needs is not installed."""
    records, notes = [], []
    for model in model_names:
        for framework in frameworks:
            needed = PACKAGES[framework] + (IMAGENET_PACKAGES.get(framework, ()) if is_imagenet(model) else ())
            missing = [package for package in needed if not installed(package)]
            if missing:
                notes.append(f"skipped {framework} {model}: {', '.join(missing)} not installed")
                continue
            records.extend((framework, model, mode, dtype) for dtype in dtypes for mode in modes)
    return records, notes
