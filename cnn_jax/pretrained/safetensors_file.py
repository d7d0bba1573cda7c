"""Reads ``.safetensors`` files with numpy (the format needs no library and holds no code).

Layout (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit header length N, N bytes of
JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
"__metadata__" entry of strings), then the little-endian tensor bytes, offsets counted from the end of the header.
The format requires the tensors' byte ranges to tile the body: in order, without overlap or gap. That is checked,
so the arrays read never hold more bytes than the file (overlapping ranges would let a small file fill memory).
"""
from __future__ import annotations

import json
import math
from typing import Dict, NamedTuple, Tuple

import ml_dtypes
import numpy as np

from cnn_jax.pretrained.errors import CorruptWeightsError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


# The format allows 100 MB; a few hundred tensors need ~50 KB, and parsed JSON takes up to ~20x its bytes in memory.
MAX_HEADER_BYTES = 4 << 20


def _integers(value, what: str, name: str, count=None) -> tuple[int, ...]:
    """A JSON list of non-negative integers (``count`` of them when given), else CorruptWeightsError."""
    if (not isinstance(value, list) or (count is not None and len(value) != count)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)):
        raise CorruptWeightsError(f"tensor {name!r} has {what} {value!r}; expected a list of "
                                  f"{count or 'any number of'} non-negative integers")
    return tuple(value)


class _Entry(NamedTuple):
    """One tensor of the header, validated: its dtype, shape and byte range in the body."""
    dtype: np.dtype
    shape: Tuple[int, ...]
    begin: int
    end: int


def _entry(body_size: int, name: str, entry) -> _Entry:
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
        raise CorruptWeightsError(f"tensor {name!r} has an unsupported or missing dtype in {entry!r} "
                                  f"(supported: {', '.join(DTYPES)})")
    dtype = np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")
    shape = _integers(entry.get("shape"), "shape", name)
    begin, end = _integers(entry.get("data_offsets"), "data_offsets", name, 2)
    if not 0 <= begin <= end <= body_size or end - begin != math.prod(shape) * dtype.itemsize:
        raise CorruptWeightsError(f"tensor {name!r} ({entry['dtype']} {shape}) claims bytes [{begin}, {end}) of "
                                  f"a {body_size}-byte body: the file is truncated or corrupt")
    return _Entry(dtype, shape, begin, end)


def _check_tiling(entries: Dict[str, _Entry], body_size: int) -> None:
    """The byte ranges must cover ``[0, body_size)`` in order, each starting where another ends (the format's rule;
    overlapping ranges would let a small file fill memory with copies of the same bytes)."""
    end, previous = 0, None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            after = f"after tensor {previous!r} ends at {end}" if previous else "at the body's start"
            raise CorruptWeightsError(
                f"tensor {name!r} starts at byte {entry.begin}, {after}: the format requires byte ranges that tile "
                f"the body without {'overlap' if entry.begin < end else 'gap'}; the file is corrupt or crafted")
        end, previous = entry.end, name
    if end != body_size:
        raise CorruptWeightsError(f"its tensors end at byte {end} of a {body_size}-byte body: the format requires "
                                  "byte ranges that tile the body; the file is truncated, corrupt or crafted")


def _array(body: bytes, entry: _Entry) -> np.ndarray:
    return (np.frombuffer(body, entry.dtype, math.prod(entry.shape), entry.begin).reshape(entry.shape)
            .astype(entry.dtype.newbyteorder("=")))


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_safetensors(data: bytes, path: str) -> Dict[str, np.ndarray]:
    """The tensors in the bytes of a ``.safetensors`` file at ``path`` (named in messages) as {name: numpy array};
    a malformed file gets CorruptWeightsError. The caller reads the file once, so the bytes it hashes are the bytes
    parsed."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or 8 + size > len(data) or size > MAX_HEADER_BYTES:
        raise CorruptWeightsError(f"cannot load {path}: its header length {size:,} exceeds the file's {len(data):,} "
                                  f"bytes or the {MAX_HEADER_BYTES:,} a weights file needs; it is truncated, "
                                  "crafted or "
                                  "not a .safetensors file")
    try:
        header = json.loads(data[8:8 + size], parse_constant=_no_constant)
        if not isinstance(header, dict):
            raise CorruptWeightsError(f"its header is a JSON {type(header).__name__}, not an object of tensors")
        body = data[8 + size:]
        entries = {name: _entry(len(body), name, entry) for name, entry in header.items() if name != "__metadata__"}
        _check_tiling(entries, len(body))
        return {name: _array(body, entry) for name, entry in entries.items()}
    except CorruptWeightsError as error:
        raise CorruptWeightsError(f"cannot load {path}: {error}") from None
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise CorruptWeightsError(f"cannot load {path}: its header is not valid safetensors JSON "
                                  f"({type(error).__name__}: {error})") from None
