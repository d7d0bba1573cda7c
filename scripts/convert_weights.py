"""Converts published ImageNet weights into this codebase's variables and caches them (orbax) for later runs.

    python scripts/convert_weights.py --model=efficientnet_lite0
    python scripts/convert_weights.py --model=resnet50 --source=~/Downloads/resnet50-0676ba61.pth

Without --source the file is looked for where its publisher installs it (the pip package, torch.hub's or Keras'
cache); a missing file gets a message naming what to download. Prints where the conversion is cached.
"""
import sys

from absl import app, flags
from absl import logging as absl_logging

_MODEL = flags.DEFINE_string("model", None, "Pretrained weights to convert (see cnn_jax.pretrained.list_pretrained).")
_SOURCE = flags.DEFINE_string("source", None, "The weights file (.pth, .safetensors, or .h5/.keras for *_keras); "
                              "default: the published file where its publisher installs it.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache directory (default ~/.cache/cnn_jax).")
flags.mark_flag_as_required("model")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # quiets orbax's per-save INFO lines
    from cnn_jax import ops, pretrained

    try:
        _, variables = pretrained.load_pretrained(_MODEL.value, _SOURCE.value, _CACHE_DIR.value)
    except pretrained.PretrainedError as error:
        sys.exit(f"error: {error}")
    print(f"{_MODEL.value}: {ops.count_params(variables['params']):,} parameters, cached in "
          f"{pretrained.cache_path(_MODEL.value, _CACHE_DIR.value)}")


if __name__ == "__main__":
    app.run(main)
