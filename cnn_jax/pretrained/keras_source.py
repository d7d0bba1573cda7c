"""Keras weights as {"<layer name>/<weight name>": array}: from an in-memory model, or a weights file loaded into
the matching ``keras.applications`` model.

A file is read by Keras itself into a freshly built application (``load_weights``), never deserialized as a model:
``.h5`` (the published applications files) and ``.weights.h5`` / ``.keras`` archives hold tensors only, and
building the architecture here means no config or lambda from the file is ever run. Keras is imported only here.

HDF5 can make a file read other files: a dataset's storage can be ``external`` (raw bytes of any path), a link can
be an ``ExternalLink`` into another HDF5 file, and a ``virtual`` dataset maps other files' datasets; a filter that
HDF5 does not build in is loaded as a plugin library. Any of these, in the file or in an ``.h5`` inside a
``.keras`` archive, is refused before Keras opens it (``check_hdf5``); otherwise another file's bytes (a secret)
could become weights, then a cache entry and a shared export. So are datasets, and ``.keras`` members, that would
inflate to more than ``MAX_INFLATION`` times the file (Keras reads each dataset whole). Keras then reads a private
copy of the checked
bytes, so what it loads is what was checked (and hashed).
"""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from cnn_jax.pretrained.errors import CorruptWeightsError, UnsafeWeightsError
from cnn_jax.pretrained.torch_file import MAX_INFLATION

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Filters HDF5 and h5py build in (deflate, shuffle, fletcher32, szip, nbit, scale-offset, h5py's LZF); any other
# filter id makes HDF5 load a plugin shared library.
BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})


def keras_weights(model: Any) -> Dict[str, np.ndarray]:
    """Each weight of each layer of a Keras model, keyed ``layer/weight`` (tf.keras' ``:0`` suffixes dropped).

    Depthwise kernels come out as (k, k, 1, C), the HWIO layout of a grouped conv, instead of Keras' (k, k, C, 1).
    """
    tensors = {}
    for layer in model.layers:
        depthwise = type(layer).__name__ == "DepthwiseConv2D"
        for weight in layer.weights:
            leaf = weight.name.split("/")[-1].split(":")[0]
            value = np.asarray(weight)
            if depthwise and leaf in ("kernel", "depthwise_kernel"):
                leaf, value = "kernel", value.transpose(0, 1, 3, 2)
            tensors[f"{layer.name}/{leaf}"] = value
    return tensors


def _dataset_problem(dataset) -> Optional[str]:
    if dataset.external:
        return f"keeps its bytes in other files ({', '.join(str(entry[0]) for entry in dataset.external)})"
    if dataset.is_virtual:
        return "is a virtual dataset, mapping other files' datasets"
    plist = dataset.id.get_create_plist()
    codes = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
    unknown = [code for code in codes if code not in BUILTIN_FILTERS]
    return f"needs HDF5 filter {unknown[0]}, which HDF5 would load as a plugin library" if unknown else None


def check_hdf5(data: bytes, what: str) -> None:
    """Raises UnsafeWeightsError when the HDF5 file ``data`` (named ``what`` in messages) has an external link, a
    dataset with external storage, a virtual dataset, a filter that is not built in, or datasets that inflate to
    more than ``MAX_INFLATION`` times the file; CorruptWeightsError when it is not HDF5."""
    import h5py

    # h5py's visitors stop at the first callback that returns something other than None: the problem found.
    def link_problem(name: str, link) -> Optional[str]:
        if isinstance(link, h5py.ExternalLink):
            return f"/{name} is a link into another file ({link.filename}:{link.path})"
        return None

    budget = [MAX_INFLATION * len(data)]  # bytes the datasets may still hold

    def object_problem(name: str, node) -> Optional[str]:
        if not isinstance(node, h5py.Dataset):
            return None
        budget[0] -= node.size * node.dtype.itemsize
        problem = _dataset_problem(node)
        if problem is None and budget[0] < 0:
            problem = f"would make its datasets inflate to more than {MAX_INFLATION}x the file's {len(data):,} bytes"
        return None if problem is None else f"its dataset /{name} {problem}"

    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError as error:
        raise CorruptWeightsError(f"{what} is not an HDF5 file ({error}): provide the Keras weights file "
                                  "(.h5, .weights.h5 or .keras), complete and uncorrupted") from None
    with handle:
        # Every link, recursing through groups by hard links only; then every object those reach, each once.
        problem = handle.visititems_links(link_problem) or handle.visititems(object_problem)
    if problem:
        raise UnsafeWeightsError(f"{what}: {problem}. A weights file holds its own tensors, stored plainly or "
                                 "gzip-compressed, so it is refused: save the weights again with Keras")


def check_keras_file(data: bytes, path: str) -> None:
    """``check_hdf5`` on a Keras weights file: an ``.h5`` itself, or each ``.h5`` inside a ``.keras`` zip."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_INFLATION * len(data):
                raise UnsafeWeightsError(f"{path}: its members would inflate to more than {MAX_INFLATION}x the file's "
                                         f"{len(data):,} bytes, which weights never do; it is refused (a zip bomb?)")
            for name in archive.namelist():
                if name.endswith(".h5"):
                    check_hdf5(archive.read(name), f"{path} (its {name})")
    elif HDF5_SIGNATURE in data[:4096]:  # the signature sits at 0, 512, 1024 or 2048 (after a user block)
        check_hdf5(data, path)
    else:
        raise CorruptWeightsError(f"{path} is neither an HDF5 file nor a .keras archive: provide the Keras weights "
                                  "file (.h5, .weights.h5 or .keras), complete and uncorrupted")


def load_keras_application(application: str, path: str, data: bytes) -> Any:
    """``keras.applications.<application>`` (with its 1000-class top, logits out) holding the weights in ``data``,
    the bytes read from ``path``; refused (``check_keras_file``) before Keras reads them."""
    check_keras_file(data, path)
    import keras

    model = getattr(keras.applications, application)(weights=None, classifier_activation=None)
    with tempfile.TemporaryDirectory() as private:  # mode 0700: only this user can change the copy
        copy = os.path.join(private, os.path.basename(path))  # Keras picks the format by the suffix
        with open(copy, "wb") as file:
            file.write(data)
        try:
            model.load_weights(copy)
        except Exception as error:  # noqa: BLE001 -- Keras raises OSError, ValueError, KeyError... for a bad file
            reason = str(error).replace(copy, path)
            raise CorruptWeightsError(
                f"cannot load {path} into keras.applications.{application} ({type(error).__name__}: {reason}). "
                "Provide that application's weights with the top (a .h5, .weights.h5 or .keras file), complete "
                "and uncorrupted") from error
    return model
