"""What the benchmark can run: its models, frameworks and modes, and the records a missing package rules out."""
from __future__ import annotations

import importlib.util
from typing import Callable, Sequence

from cnn_jax import models

# The benchmark's models and the classes in their heads; input shapes come from the model registry.
NUM_CLASSES = {"simple_cnn": 10, "resnet20": 10, "mobilenet_v2": 1000, "resnet50": 1000}
FRAMEWORKS = ("cnn_jax", "torch", "keras")
MODES = ("train", "infer")
# The packages each framework's records need; torchvision only for the ImageNet models.
PACKAGES = {"cnn_jax": ("jax", "flax", "optax"), "torch": ("torch",), "keras": ("keras", "tensorflow")}
IMAGENET_PACKAGES = {"torch": ("torchvision",)}


def is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def is_imagenet(model: str) -> bool:
    """Whether `model` is designed for 224x224 inputs (and so runs at the smaller --batch_size_224)."""
    return models.model_spec(model).input_shape[0] >= 224


def plan(model_names: Sequence[str], frameworks: Sequence[str], modes: Sequence[str],
         installed: Callable[[str], bool] = is_installed) -> tuple[list, list]:
    """The (framework, model, mode) records to run, grouped by model, and a note for each (framework, model)
    skipped because a package it needs is not installed."""
    records, notes = [], []
    for model in model_names:
        for framework in frameworks:
            needed = PACKAGES[framework] + (IMAGENET_PACKAGES.get(framework, ()) if is_imagenet(model) else ())
            missing = [package for package in needed if not installed(package)]
            if missing:
                notes.append(f"skipped {framework} {model}: {', '.join(missing)} not installed")
                continue
            records.extend((framework, model, mode) for mode in modes)
    return records, notes
