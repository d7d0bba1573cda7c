"""The model zoo's registry: a name -> builder table with what each model accepts."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder ``build(num_classes, **kwargs) -> nn.Module``, the input shape it is
    designed for (H, W, C), and the smallest height/width it accepts."""
    name: str
    build: Callable[..., nn.Module]
    input_shape: Tuple[int, int, int]
    min_size: int
    description: str


_REGISTRY: Dict[str, ModelSpec] = {}


def register(name: str, *, input_shape: Tuple[int, int, int], min_size: int):
    """Decorator adding a builder to the zoo under ``name``; its docstring's first line describes it."""
    def wrap(build):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (build.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(name, build, tuple(input_shape), min_size, doc[0] if doc else "")
        return build
    return wrap


def list_models() -> List[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds the zoo model ``name`` with a ``num_classes``-way head; kwargs go to its builder (e.g. ``dtype``)."""
    spec = model_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return spec.build(num_classes, **kwargs)
