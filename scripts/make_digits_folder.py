"""An image folder from scikit-learn's handwritten digits (load_digits, shipped inside its wheel): a fourth
dataset, unlike the three tfds ones, for testing that any folder trains right from scratch.

    python scripts/make_digits_folder.py --out=/tmp/digits --size=32

Writes `<out>/<digit>/<index>.png`: the 1,797 8x8 images (16 gray levels) scaled to 0-255 and upsampled to
`--size` pixels a side (bilinear), one class folder per digit.
"""
import dataclasses
import os
from typing import Optional

from absl import app

from cnn_jax import cli


@dataclasses.dataclass(frozen=True)
class Digits:
    """Where to write the folder, and at what size.

    Attributes:
      out: the folder to write (created).
      size: side of the written images, in pixels.
    """
    out: Optional[str] = None
    size: int = 32


def write_digits_folder(out: str, size: int = 32) -> int:
    """Writes the folder; returns the number of images."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target)):
        folder = os.path.join(out, str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.BILINEAR).save(os.path.join(folder, f"{index:04d}.png"))
    return len(pixels)


def main(argv) -> None:
    del argv
    config = cli.parse(Digits())
    count = write_digits_folder(config.out, config.size)
    print(f"{count} digit images at {config.size}x{config.size} in {config.out}")


if __name__ == "__main__":
    cli.define_flags(Digits(), required=("out",))
    app.run(main)
