"""Writes a synthetic image folder (one subfolder per class) for measuring the input pipeline.

`python scripts/make_image_folder.py --out=/tmp/folder_2000 --images=2000` writes JPEGs of --size pixels square
(default 224) into --classes subfolders. Each image is a smooth random colour field plus noise, whose class sets
its dominant hue, so the folder is learnable and compresses like a photo (about 10-20 KB at 224 px). The same
arguments write the same files.
"""
import dataclasses
import os
from typing import Optional

import numpy as np
from absl import app
from PIL import Image

from cnn_jax import cli


def make_image(rng: np.random.Generator, label: int, classes: int, size: int) -> np.ndarray:
    """A uint8 (size, size, 3) image: a bilinear upsampling of a coarse 8x8 field, tinted by the class, plus noise."""
    coarse = rng.uniform(0, 1, (8, 8, 3))
    coarse[..., label % 3] += 0.5 + 0.5 * (label / max(1, classes - 1))
    field = np.asarray(Image.fromarray((coarse / coarse.max() * 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR), np.float32)
    return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Folder:
    """What to write.

    Attributes:
      out: folder to create (class subfolders go inside).
      images: number of images in all.
      classes: number of classes (subfolders), at least 2.
      size: side of the square images in pixels.
      seed: the random seed: the same arguments write the same files.
    """
    out: Optional[str] = None
    images: int = 2000
    classes: int = 5
    size: int = 224
    seed: int = 0

    def __post_init__(self):
        if self.images < self.classes or self.classes < 2:
            raise ValueError("need at least 2 --classes and at least one image per class (--images)")


def main(argv) -> None:
    del argv
    try:
        args = cli.parse(Folder())
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    rng = np.random.default_rng(args.seed)
    for i in range(args.images):
        label = i % args.classes
        folder = os.path.join(args.out, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(make_image(rng, label, args.classes, args.size)).save(
            os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    print(f"wrote {args.images} images of {args.size}x{args.size} in {args.classes} classes to {args.out}")


if __name__ == "__main__":
    cli.define_flags(Folder(), required=("out",))
    app.run(main)
