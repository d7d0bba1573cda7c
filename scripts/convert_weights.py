"""Converts published ImageNet weights into this codebase's variables and caches them (orbax) for later runs.

    python scripts/convert_weights.py --model=efficientnet_lite0
    python scripts/convert_weights.py --model=resnet50 --source=~/Downloads/resnet50-0676ba61.pth

Without --source the file is looked for where its publisher installs it (the pip package, torch.hub's or Keras'
cache); a missing file gets a message naming what to download. Prints where the conversion is cached.
"""
import dataclasses
import sys
from typing import Optional

from absl import app
from absl import logging as absl_logging

from cnn_jax import cli, ops, pretrained


@dataclasses.dataclass(frozen=True)
class Conversion:
    """Which weights to convert, from where, into which cache.

    Attributes:
      model: pretrained weights to convert (see cnn_jax.pretrained.list_pretrained).
      source: the weights file (.pth, .safetensors, or .h5/.keras for *_keras); default: the
        published file where its publisher installs it.
      cache_dir: cache directory (default $CNN_JAX_CACHE_DIR/pretrained, ~/.cache/cnn_jax/pretrained).
    """
    model: Optional[str] = None
    source: Optional[str] = None
    cache_dir: Optional[str] = None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # quiets orbax's per-save INFO lines
    config = cli.parse(Conversion())
    try:
        _, variables = pretrained.load_pretrained(config.model, config.source, config.cache_dir)
    except pretrained.PretrainedError as error:
        sys.exit(f"error: {error}")
    print(f"{config.model}: {ops.count_params(variables['params']):,} parameters, cached in "
          f"{pretrained.cache_path(config.model, config.cache_dir)}")


if __name__ == "__main__":
    cli.define_flags(Conversion(), required=("model",))
    app.run(main)
