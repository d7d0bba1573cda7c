"""Crafted weights files (issue 30): each is refused with one clear error, or costs no more than its own size.

The files are written here byte by byte from the formats' descriptions (``torch.save``'s zip layout, safetensors,
HDF5 through h5py), so no test needs torch or Keras, and none reads more than a few MiB.
"""
from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from helpers import ROOT

from cnn_jax import pretrained
from cnn_jax.pretrained import keras_source

MiB = 1 << 20


# ---------------------------------------------------------------- torch.save zip files, written from the layout

def _unicode(text: str) -> bytes:
    encoded = text.encode()
    return b"X" + len(encoded).to_bytes(4, "little") + encoded  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + value.to_bytes(4, "little", signed=True)  # BININT


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _state_pickle(tensors: dict, numels: dict, legacy: bool = False) -> bytes:
    """The pickle ``torch.save`` writes for a state dict of float32 tensors: {name: _rebuild_tensor_v2(storage,
    offset, shape, stride, False)}, each storage a persistent id ("storage", torch.FloatStorage, key, "cpu", numel).
    ``tensors`` maps a name (any pickled value) to (storage key, offset, shape, stride). The legacy layout's
    persistent ids end with a view (None)."""
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for name, (key, offset, shape, stride) in tensors.items():
        out += _unicode(name) if isinstance(name, str) else _int(name)
        out += b"ctorch._utils\n_rebuild_tensor_v2\n("  # GLOBAL, MARK of its arguments
        out += b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode(key) + _unicode("cpu")
        out += _int(numels[key]) + (b"N" if legacy else b"") + b"tQ"  # TUPLE, BINPERSID
        out += _int(offset) + _ints(shape) + _ints(stride) + b"\x89tR"  # False, TUPLE, REDUCE
    return bytes(out + b"u.")  # SETITEMS, STOP


def _torch_zip(path, tensors: dict, storages: dict, compression=zipfile.ZIP_STORED) -> None:
    """A ``torch.save`` zip archive: ``storages`` maps a key to float32 values."""
    numels = {key: len(values) for key, values in storages.items()}
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", _state_pickle(tensors, numels))
        archive.writestr("archive/byteorder", "little")
        for key, values in storages.items():
            archive.writestr(f"archive/data/{key}", np.asarray(values, np.float32).tobytes())


def _peak_bytes(function, refusal=None, match=None) -> int:
    """The peak of memory allocated (numpy arrays included) while ``function`` runs; with ``refusal``, an error
    it must raise (whose message matches ``match``)."""
    tracemalloc.start()
    try:
        if refusal is None:
            function()
        else:
            with pytest.raises(refusal, match=match):
                function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tensors_sharing_one_storage_hold_its_bytes_once(tmp_path):
    """64 full-size views of one 1 MiB storage: copies would take 64 MiB; views of the storage take 1 MiB."""
    numel = MiB // 4
    path = tmp_path / "shared.pth"
    _torch_zip(path, {f"w{i}": ("0", 0, (512, 512), (512, 1)) for i in range(64)}, {"0": np.arange(numel)})
    state = {}
    peak = _peak_bytes(lambda: state.update(pretrained.read_state_dict(path)))
    assert peak < 4 * MiB, f"reading a {path.stat().st_size:,}-byte file took {peak:,} bytes"
    assert len(state) == 64 and np.shares_memory(state["w0"], state["w63"])
    np.testing.assert_array_equal(state["w5"][1], np.arange(512, 1024))
    assert not state["w0"].flags.writeable  # a view of the file's bytes: a consumer copies what it keeps


def test_a_small_archive_cannot_inflate_to_many_times_its_size(tmp_path):
    """The issue's 18 KB file: one deflated storage of zeros, which ``torch.save`` (storing) never writes."""
    path = tmp_path / "bomb.pth"
    _torch_zip(path, {f"w{i}": ("0", 0, (2048, 2048), (2048, 1)) for i in range(64)}, {"0": np.zeros(4 * MiB)},
               compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 64 * 1024
    peak = _peak_bytes(lambda: pretrained.read_state_dict(path), pretrained.CorruptWeightsError,
                       r"bomb.pth: its storages inflate to more than 2x the file's")
    assert peak < 2 * MiB  # refused before the storage is inflated


def test_a_pickle_longer_than_any_state_dict_needs_is_refused(tmp_path):
    """Each pickled byte can make a Python object of ~50 bytes: the pickle is bounded, in both layouts."""
    from cnn_jax.pretrained.torch_file import LEGACY_MAGIC, LEGACY_PROTOCOL, MAX_PICKLE_BYTES

    huge = {f"w{i}": ("0", 0, (2,), (1,)) for i in range(MAX_PICKLE_BYTES // 100)}
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                                                                       {"little_endian": True}))
                       + _state_pickle(huge, {"0": 2}, legacy=True))
    with pytest.raises(pretrained.CorruptWeightsError, match=r"legacy.pth: its pickle is longer than 4,194,304 bytes"):
        pretrained.read_state_dict(legacy)
    archive = tmp_path / "zip.pth"
    _torch_zip(archive, huge, {"0": [1.0, 2.0]}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(pretrained.CorruptWeightsError, match=r"zip.pth: its archive/data.pkl would inflate to .* "
                                                             r"far more than a state dict's pickle needs"):
        pretrained.read_state_dict(archive)


def test_a_state_dict_with_non_string_keys_is_refused(tmp_path):
    path = tmp_path / "int_keys.pth"
    _torch_zip(path, {3: ("0", 0, (2,), (1,))}, {"0": [1.0, 2.0]})
    with pytest.raises(pretrained.CorruptWeightsError, match=r"int_keys.pth: its key 3 is a int, not a string"):
        pretrained.read_state_dict(path)
    with pytest.raises(pretrained.WeightMappingError, match=r"source key 3 is a int, not a string"):
        pretrained.convert_torch_state_dict("resnet18", {3: np.zeros(2, np.float32)})


def test_convert_weights_gives_one_error_line_for_non_string_keys(tmp_path):
    path = tmp_path / "int_keys.pth"
    _torch_zip(path, {3: ("0", 0, (2,), (1,))}, {"0": [1.0, 2.0]})
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "scripts/convert_weights.py", "--model=resnet18", f"--source={path}",
                           f"--cache_dir={tmp_path / 'cache'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert "its key 3 is a int, not a string" in errors[0] and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- safetensors

def _safetensors(path, header: dict, body: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + body)


def test_overlapping_safetensors_ranges_are_refused_before_any_copy(tmp_path):
    """256 tensors over the same 1 MiB: 256 MiB if each were copied, the issue's 4.2 MB -> 1 GiB at small scale."""
    path = tmp_path / "overlap.safetensors"
    _safetensors(path, {f"t{i}": {"dtype": "F32", "shape": [MiB // 4], "data_offsets": [0, MiB]}
                        for i in range(256)}, bytes(MiB))
    peak = _peak_bytes(lambda: pretrained.read_state_dict(path), pretrained.CorruptWeightsError,
                       r"overlap.safetensors: tensor 't1' starts at byte 0, after tensor 't0' ends at 1048576: the "
                       "format requires byte ranges that tile the body without overlap")
    assert peak < 4 * MiB  # the file is read once (1 MiB); no tensor is copied before the refusal


@pytest.mark.parametrize("offsets,message", [
    ([[0, 8], [4, 12]], r"tensor 'b' starts at byte 4, after tensor 'a' ends at 8.*without overlap"),
    ([[0, 8], [12, 20]], r"tensor 'b' starts at byte 12, after tensor 'a' ends at 8.*without gap"),
    ([[4, 12], [12, 20]], r"tensor 'a' starts at byte 4, at the body's start.*without gap"),
    ([[0, 8], [8, 16]], r"its tensors end at byte 16 of a 24-byte body"),
])
def test_safetensors_ranges_must_tile_the_body(tmp_path, offsets, message):
    path = tmp_path / "t.safetensors"
    _safetensors(path, {name: {"dtype": "F32", "shape": [2], "data_offsets": span}
                        for name, span in zip("ab", offsets)}, bytes(24))
    with pytest.raises(pretrained.CorruptWeightsError, match=message):
        pretrained.read_state_dict(path)


@pytest.mark.parametrize("dtype", [[], {}, None, 5, ["F32"]], ids=repr)
def test_a_safetensors_dtype_that_is_not_a_name_is_one_clear_error(tmp_path, dtype):
    path = tmp_path / "t.safetensors"
    _safetensors(path, {"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(pretrained.CorruptWeightsError, match=r"t.safetensors: tensor 'a' has an unsupported or "
                                                             r"missing dtype .*\(supported: F64, F32"):
        pretrained.read_state_dict(path)


# ---------------------------------------------------------------- Keras HDF5 files

@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"SECRET!!")
    return path


def _hdf5_with(tmp_path, secret, kind: str) -> bytes:
    """An HDF5 weights file that makes its reader read ``secret``, another HDF5 file, or a plugin library."""
    h5py = pytest.importorskip("h5py", reason="h5py (it comes with Keras) is not installed")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file["x"] = np.ones(8, np.uint8)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file["conv1/kernel"] = np.ones(3, np.float32)
        if kind == "external storage":
            file.create_dataset("conv1/bias", shape=(8,), dtype="u1", external=[(str(secret), 0, 8)])
        elif kind == "external link":
            file["conv1/bias"] = h5py.ExternalLink(str(other), "/x")
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(8,), dtype="u1")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(8,))
            file.create_virtual_dataset("conv1/bias", layout)
        elif kind == "plugin filter":
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_chunk((4,))
            plist.set_filter(307, h5py.h5z.FLAG_OPTIONAL)  # bzip2's registered id: not built into HDF5
            h5py.h5d.create(file["conv1"].id, b"bias", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple((8,)),
                            dcpl=plist)
        else:
            file["conv1/bias"] = h5py.SoftLink("/conv1/kernel")  # inside the file: harmless
    return buffer.getvalue()


@pytest.mark.parametrize("kind,message", [
    ("external storage", r"its dataset /conv1/bias keeps its bytes in other files \(.*secret\)"),
    ("external link", r"/conv1/bias is a link into another file \(.*other.h5:/x\)"),
    ("virtual dataset", r"its dataset /conv1/bias is a virtual dataset"),
    ("plugin filter", r"its dataset /conv1/bias needs HDF5 filter 307, which HDF5 would load as a plugin"),
])
def test_hdf5_that_reads_other_files_is_refused_before_keras_opens_it(tmp_path, secret, kind, message):
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    path.write_bytes(_hdf5_with(tmp_path, secret, kind))
    with pytest.raises(pretrained.UnsafeWeightsError, match=message) as raised:
        pretrained.convert_keras("resnet50_keras", path)
    assert str(path) in str(raised.value) and "refused" in str(raised.value)
    # The same inside a .keras archive.
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("config.json", "{}")
        zipped.writestr("model.weights.h5", path.read_bytes())
    with pytest.raises(pretrained.UnsafeWeightsError, match=r"model.keras \(its model.weights.h5\): .*" + message):
        pretrained.load_pretrained("resnet50_keras", source=archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "resnet50_keras" / "source.json").exists()


def test_hdf5_or_keras_archives_that_inflate_far_beyond_their_size_are_refused(tmp_path):
    """Keras reads each dataset whole: 64 MiB of gzipped zeros in a file of ~100 KB would be inflated."""
    h5py = pytest.importorskip("h5py", reason="h5py (it comes with Keras) is not installed")
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("conv1/kernel", data=np.zeros(64 * MiB, np.uint8), chunks=(MiB,), compression="gzip")
    assert path.stat().st_size < MiB
    peak = _peak_bytes(lambda: pretrained.convert_keras("resnet50_keras", path), pretrained.UnsafeWeightsError,
                       r"bomb.h5: its dataset /conv1/kernel would make its datasets inflate to more than 2x the file's")
    assert peak < 8 * MiB
    archive = tmp_path / "bomb.keras"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("model.weights.h5", bytes(64 * MiB))
    with pytest.raises(pretrained.UnsafeWeightsError, match=r"bomb.keras: its members would inflate to more than 2x"):
        pretrained.convert_keras("resnet50_keras", archive)


def test_self_contained_hdf5_passes_the_check(tmp_path, secret):
    keras_source.check_keras_file(_hdf5_with(tmp_path, secret, "soft link"), "fine.h5")  # raises nothing
    with pytest.raises(pretrained.CorruptWeightsError, match="x.h5 is neither an HDF5 file nor a .keras archive"):
        keras_source.check_keras_file(b"not an hdf5 file", "x.h5")


# ---------------------------------------------------------------- checksums: the bytes hashed are the bytes parsed

def test_a_source_is_read_once_and_those_bytes_hashed_and_parsed(tmp_path, monkeypatch):
    path = tmp_path / "resnet18-f37072fd.pth"
    _torch_zip(path, {"conv1.weight": ("0", 0, (2,), (1,))}, {"0": [1.0, 2.0]})
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            opened.append(args[0] if args else kwargs.get("mode", "r"))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    with pytest.raises(pretrained.CorruptWeightsError, match=r"its sha256 is [0-9a-f]{64}, expected sha256 "
                                                             r"f37072fd\.\.\. \(from its file name\)"):
        pretrained.load_pretrained("resnet18", source=path, cache_dir=tmp_path / "cache")
    assert opened == ["rb"]


def test_a_weights_cache_others_can_write_is_neither_read_nor_written(tmp_path, caplog):
    """Converted weights planted in a cache directory that others can write are never loaded: the published file is
    converted again (its SHA-256 checked), with one warning naming the fix, and nothing is written there."""
    spec = pretrained.pretrained_spec("efficientnet_lite0")
    if spec.search_path() is None or not spec.search_path().is_file():
        pytest.skip(f"for the real efficientnet_lite0 weights, {spec.how_to_get}")
    cache = tmp_path / "open"
    _, reference = pretrained.load_pretrained("efficientnet_lite0", cache_dir=tmp_path / "private")
    pretrained.load_pretrained("efficientnet_lite0", cache_dir=cache)  # a cache, written while it was private
    cache.chmod(0o777)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    with caplog.at_level("WARNING", logger="cnn_jax.pretrained.load"):
        _, variables = pretrained.load_pretrained("efficientnet_lite0", cache_dir=cache)
    assert "not using the converted-weights cache" in caplog.text and "written by group or others" in caplog.text
    assert "fix: set CNN_JAX_CACHE_DIR" in caplog.text
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                  reference["params"]["classifier"]["kernel"])
