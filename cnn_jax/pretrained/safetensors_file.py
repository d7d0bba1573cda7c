"""Reads ``.safetensors`` files with numpy (the format needs no library and holds no code).

Layout (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit header length N, N bytes of
JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
"__metadata__" entry of strings), then the little-endian tensor bytes, offsets counted from the end of the header.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict

import ml_dtypes
import numpy as np

from cnn_jax.pretrained.errors import CorruptWeightsError, WeightsNotFoundError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


MAX_HEADER_BYTES = 100 << 20  # the format's own limit on the JSON header


def _integers(value, what: str, name: str, count=None) -> tuple[int, ...]:
    """A JSON list of non-negative integers (``count`` of them when given), else CorruptWeightsError."""
    if (not isinstance(value, list) or (count is not None and len(value) != count)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)):
        raise CorruptWeightsError(f"tensor {name!r} has {what} {value!r}; expected a list of "
                                  f"{count or 'any number of'} non-negative integers")
    return tuple(value)


def _tensor(body: bytes, name: str, entry) -> np.ndarray:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise CorruptWeightsError(f"tensor {name!r} has an unsupported or missing dtype in {entry!r} "
                                  f"(supported: {', '.join(DTYPES)})")
    dtype = np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")
    shape = _integers(entry.get("shape"), "shape", name)
    begin, end = _integers(entry.get("data_offsets"), "data_offsets", name, 2)
    if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * dtype.itemsize:
        raise CorruptWeightsError(f"tensor {name!r} ({entry['dtype']} {shape}) claims bytes [{begin}, {end}) of "
                                  f"a {len(body)}-byte body: the file is truncated or corrupt")
    return np.frombuffer(body, dtype, math.prod(shape), begin).reshape(shape).astype(dtype.newbyteorder("="))


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as {name: numpy array}; a malformed file gets CorruptWeightsError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"{path} does not exist")
    with open(path, "rb") as file:
        data = file.read()
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or 8 + size > len(data) or size > MAX_HEADER_BYTES:
        raise CorruptWeightsError(f"cannot load {path}: its header length {size} exceeds the file's {len(data)} "
                                  f"bytes or the format's {MAX_HEADER_BYTES}; it is truncated or not a .safetensors file")
    try:
        header = json.loads(data[8:8 + size], parse_constant=_no_constant)
        if not isinstance(header, dict):
            raise CorruptWeightsError(f"its header is a JSON {type(header).__name__}, not an object of tensors")
        body = data[8 + size:]
        return {name: _tensor(body, name, entry) for name, entry in header.items() if name != "__metadata__"}
    except CorruptWeightsError as error:
        raise CorruptWeightsError(f"cannot load {path}: {error}") from None
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise CorruptWeightsError(f"cannot load {path}: its header is not valid safetensors JSON "
                                  f"({type(error).__name__}: {error})") from None
