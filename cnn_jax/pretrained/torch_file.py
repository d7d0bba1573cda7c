"""Reads PyTorch ``torch.save`` state dicts into numpy arrays, without torch and without running pickled code.

``torch.save`` writes one of two layouts (``torch/serialization.py``):
  zip (PyTorch >= 1.6): ``<archive>/data.pkl`` holds the state dict pickle, ``<archive>/data/<key>`` each storage's
    raw bytes, ``<archive>/byteorder`` "little" or "big";
  legacy stream: pickles of a magic number, the protocol version (1001) and system info, then the state dict
    pickle, then a pickle of the storage keys, then each storage as an int64 element count followed by its bytes.
In both, the state dict pickle names storages by persistent id ``("storage", torch.<Type>Storage, key, location,
numel[, view])`` and rebuilds each tensor with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)``. The unpickler here resolves exactly those globals (plus ``collections.OrderedDict``) to numpy and refuses
every other one, so a file cannot make loading run code.

Memory is bounded by the file: each tensor comes back as a read-only view into its storage, never a copy, so many
tensors sharing one storage cost that storage once; and a zip archive's storages may not inflate to more than
``MAX_INFLATION`` times the archive's size (``torch.save`` stores them uncompressed). The converter copies only the
tensors the model's mapping takes, each of the shape the model needs.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from typing import Any, BinaryIO, Callable, Dict, NamedTuple, Optional, Tuple

import ml_dtypes
import numpy as np

from cnn_jax.pretrained.errors import CorruptWeightsError, PretrainedError, UnsafeWeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType(NamedTuple):
    """What ``torch.<Type>Storage`` unpickles to here: the element dtype."""
    dtype: np.dtype


class _Storage:
    """A storage's elements; the legacy layout supplies its bytes after the pickle that refers to it."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.data: Optional[np.ndarray] = None

    def fill(self, raw: bytes, what: str) -> None:
        if len(raw) != self.numel * self.dtype.itemsize:
            raise CorruptWeightsError(f"{what} holds {len(raw)} bytes, not the {self.numel} elements of "
                                      f"{self.dtype} its header announces: the file is truncated or corrupt")
        self.data = np.frombuffer(raw, self.dtype)


class _Tensor(NamedTuple):
    """A tensor as ``_rebuild_tensor_v2`` describes it: a strided view into a storage."""
    storage: _Storage
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        """A read-only view into the storage (no copy: the bytes are held once however many tensors share them)."""
        data = self.storage.data
        if data is None:
            raise CorruptWeightsError("a tensor refers to a storage whose bytes the file does not contain")
        if 0 in self.shape:
            return np.zeros(self.shape, data.dtype)
        if len(self.stride) != len(self.shape) or any(n < 0 for n in self.shape):
            raise CorruptWeightsError(f"a tensor has shape {self.shape} and strides {self.stride}: the file is corrupt")
        if any(s == 0 and n > 1 for n, s in zip(self.shape, self.stride)) or math.prod(self.shape) > data.size:
            # A broadcast view: a few stored bytes would become an array of any size when copied.
            raise CorruptWeightsError(f"a tensor of shape {self.shape} (strides {self.stride}) has more elements "
                                      f"than its storage's {data.size}: weights are never broadcast views; re-save "
                                      "the state dict with contiguous tensors")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.size:
            raise CorruptWeightsError(f"a tensor of shape {self.shape} reaches past its storage of {data.size} "
                                      "elements: the file is corrupt")
        strides = tuple(s * data.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(data[self.offset:], self.shape, strides, writeable=False)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _Tensor:
    del requires_grad, backward_hooks, metadata  # autograd state: meaningless for stored weights
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a tensor state dict needs; ``load_storage`` answers persistent ids."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(np.dtype(STORAGE_DTYPES[name]))
        raise UnsafeWeightsError(
            f"it pickles {module}.{name}, which a tensor state dict never needs (allowed: collections.OrderedDict, "
            "torch._utils._rebuild_tensor_v2, torch.*Storage). Loading it could run arbitrary code, so it is "
            "refused: save `model.state_dict()` with torch.save, or convert it to .safetensors")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise CorruptWeightsError(f"unsupported persistent id {pid!r}: expected a state dict of tensors, "
                                      "not a pickled module; save `model.state_dict()` instead")
        if not isinstance(pid[1], _StorageType):
            raise CorruptWeightsError(f"persistent id {pid!r} names no storage type")
        return self._load_storage(pid)


def _unpickle(file: io.BytesIO, load_storage: Callable[[tuple], _Storage] = lambda pid: None) -> Any:
    """The pickle at ``file``'s position, read from at most ``MAX_PICKLE_BYTES`` (each pickled byte can make a
    Python object of ~50 bytes, so the bound is on memory too); the position moves past it. Without
    ``load_storage``, a pickle of plain values, as the legacy header pickles are."""
    start = file.tell()
    window = io.BytesIO(file.getbuffer()[start:start + MAX_PICKLE_BYTES])
    try:
        value = _RestrictedUnpickler(window, load_storage).load()
    except (EOFError, pickle.UnpicklingError):
        if len(window.getbuffer()) == MAX_PICKLE_BYTES:
            raise CorruptWeightsError(f"its pickle is longer than {MAX_PICKLE_BYTES:,} bytes, far more than a state "
                                      "dict's needs: the file is corrupt or crafted") from None
        raise
    file.seek(start + window.tell())
    return value


def _read_zip(data: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CorruptWeightsError(f"it is a zip file but not a torch.save archive (expected one data.pkl, "
                                      f"found {len(pickles)})")
        prefix = pickles[0][:-len("data.pkl")]
        if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
            raise CorruptWeightsError("it was saved big-endian, which is not supported; re-save it on a "
                                      "little-endian machine")
        storages: Dict[str, _Storage] = {}
        budget = [MAX_INFLATION * len(data)]  # bytes the storages may still inflate to

        def load_storage(pid: tuple) -> _Storage:
            _, storage_type, key, _, numel = pid[:5]
            if key not in storages:
                storages[key] = _Storage(storage_type.dtype, int(numel))
                name = f"{prefix}data/{key}"
                size = storages[key].numel * storages[key].dtype.itemsize
                _check_member_size(archive, name, size)
                budget[0] -= size
                if budget[0] < 0:
                    raise CorruptWeightsError(
                        f"its storages inflate to more than {MAX_INFLATION}x the file's {len(data):,} bytes, which a "
                        "torch.save archive (stored uncompressed) never does: the file is corrupt or crafted")
                storages[key].fill(archive.read(name), f"storage {key}")
            return storages[key]

        _check_member_size(archive, pickles[0], None)
        return _unpickle(io.BytesIO(archive.read(pickles[0])), load_storage)


MAX_INFLATION = 2  # torch.save stores storages uncompressed (1x); a re-zipped file's float weights deflate ~1.1x
MAX_PICKLE_BYTES = 4 << 20  # a state dict's pickle names its tensors: ImageNet models' need under 100 KB


def _check_member_size(archive: zipfile.ZipFile, name: str, expected: Optional[int]) -> None:
    """Refuses a member before inflating it when its size is not the one its tensors need (a zip bomb)."""
    try:
        size = archive.getinfo(name).file_size
    except KeyError:
        raise CorruptWeightsError(f"the archive lacks {name}, which its state dict refers to") from None
    if expected is None and size > MAX_PICKLE_BYTES:
        raise CorruptWeightsError(f"its {name} would inflate to {size:,} bytes, far more than a state dict's "
                                  f"pickle needs (at most {MAX_PICKLE_BYTES:,}): the file is corrupt or crafted")
    if expected is not None and size != expected:
        raise CorruptWeightsError(f"its {name} would inflate to {size:,} bytes, but its tensors need {expected:,}: "
                                  "the file is corrupt or crafted")


def _read_legacy(data: bytes) -> Any:
    with io.BytesIO(data) as file:
        if _unpickle(file) != LEGACY_MAGIC:
            raise CorruptWeightsError("it is neither a torch.save zip archive nor a legacy torch.save file")
        if _unpickle(file) != LEGACY_PROTOCOL:
            raise CorruptWeightsError(f"unsupported legacy torch.save protocol (expected {LEGACY_PROTOCOL})")
        if not _unpickle(file).get("little_endian", True):
            raise CorruptWeightsError("it was saved big-endian, which is not supported; re-save it on a "
                                      "little-endian machine")
        storages: Dict[str, _Storage] = {}

        def load_storage(pid: tuple) -> _Storage:
            _, storage_type, key, _, numel, view = pid
            if view is not None:
                raise CorruptWeightsError("it stores views of storages, which this reader does not support; "
                                          "re-save the state dict with a current torch.save")
            return storages.setdefault(key, _Storage(storage_type.dtype, int(numel)))

        state = _unpickle(file, load_storage)
        for key in _unpickle(file):
            storage = storages[key]
            count = int.from_bytes(file.read(8), "little")
            if count != storage.numel:
                raise CorruptWeightsError(f"storage {key} announces {count} elements, its tensors {storage.numel}: "
                                          "the file is truncated or corrupt")
            storage.fill(file.read(count * storage.dtype.itemsize), f"storage {key}")
        return state


def _state_dict(state: Any) -> Dict[str, np.ndarray]:
    if not isinstance(state, dict) or not state:
        raise CorruptWeightsError(f"it holds a {type(state).__name__}, not a state dict (name -> tensor); "
                                  "save `model.state_dict()`")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CorruptWeightsError(f"its key {key!r} is a {type(key).__name__}, not a string: a state dict maps "
                                      "parameter names to tensors; save `model.state_dict()`")
        if not isinstance(value, _Tensor):
            raise CorruptWeightsError(f"its entry {key!r} is a {type(value).__name__}, not a tensor: expected a "
                                      "state dict (name -> tensor); save `model.state_dict()`")
    return {key: value.to_numpy() for key, value in state.items()}


def parse_torch_file(data: bytes, path: str) -> Dict[str, np.ndarray]:
    """The state dict in the bytes of a ``torch.save`` file (zip or legacy layout) at ``path`` (named in messages),
    as {name: read-only numpy array}. The caller reads the file once, so the bytes it hashes are the bytes parsed.

    Raises ``UnsafeWeightsError`` when the pickle asks for anything but tensors and ``CorruptWeightsError`` when the
    file is truncated, not a state dict, or would take more memory than its size accounts for.
    """
    try:
        return _state_dict(_read_zip(data) if zipfile.is_zipfile(io.BytesIO(data)) else _read_legacy(data))
    except PretrainedError as error:
        raise type(error)(f"cannot load {path}: {error}") from None
    except Exception as error:  # noqa: BLE001 -- any parse failure means the file is not a readable state dict
        raise CorruptWeightsError(f"cannot read {path} as a PyTorch state dict ({type(error).__name__}: {error}); "
                                  "it is truncated, corrupt or of another format: download it again") from error
