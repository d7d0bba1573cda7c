"""Published ImageNet weights converted into this codebase's ``{"params", "batch_stats"}``.

``load_pretrained(name, source=None, cache_dir=None) -> (model, variables)`` is the entry point (names:
``list_pretrained()``); ``convert_torch_state_dict`` and ``convert_keras`` convert in-memory sources. No loader
unpickles arbitrary code or needs torch: PyTorch files are read by a restricted unpickler, Keras files by Keras.
"""
from cnn_jax.pretrained.catalog import PretrainedSpec, list_pretrained, pretrained_spec
from cnn_jax.pretrained.errors import (
    CorruptWeightsError,
    PretrainedError,
    UnsafeWeightsError,
    WeightMappingError,
    WeightsNotFoundError,
)
from cnn_jax.pretrained.load import (
    cache_path,
    convert_file,
    convert_keras,
    convert_torch_state_dict,
    load_pretrained,
    read_state_dict,
)

__all__ = ["CorruptWeightsError", "PretrainedError", "PretrainedSpec", "UnsafeWeightsError", "WeightMappingError",
           "WeightsNotFoundError", "cache_path", "convert_file", "convert_keras", "convert_torch_state_dict",
           "list_pretrained", "load_pretrained", "pretrained_spec", "read_state_dict"]
