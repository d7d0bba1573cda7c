"""What a trained network looks at: `python -m experiments.visualize --workdir=runs/flowers`.

Loads the run's export (`<workdir>/export/`) and writes `<workdir>/gallery/index.html` with its PNGs
(`cnn_jax.interpret.write_gallery`): for the first `--num_images` test images of the run's dataset (read as the
run read it, from its flags.json), saliency, SmoothGrad, Integrated Gradients and Grad-CAM of `--layer` beside
the prediction; the first convolution's filters; the feature maps of every sown layer; and one
activation-maximization image per class. `--images=a.jpg,b.png` explains those files instead; their true
class being unknown, the gallery's "true" column repeats the prediction.
"""
import dataclasses
import json
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402

from cnn_jax import cli, data, export  # noqa: E402
from cnn_jax.interpret.gallery import write_gallery  # noqa: E402
from cnn_jax.workdir_files import GALLERY_DIR, SETTINGS_FILE  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Visualize:
    """What to explain, and how.

    Attributes:
      workdir: run directory holding export/ and flags.json.
      num_images: test images to explain.
      images: image files to explain instead of test images.
      layer: Grad-CAM layer: a sown name (features, stage3) or a module path.
      data_dir: TFDS data dir; default: the run's.
      smoothgrad_samples: noisy copies averaged by SmoothGrad.
      ig_steps: steps along the Integrated Gradients path.
      visualization_steps: optimization steps of each activation-maximization image.
      seed: seed of SmoothGrad's noise and the visualizations' jitter.
    """
    workdir: Optional[str] = None
    num_images: int = 8
    images: tuple[str, ...] = ()
    layer: str = "features"
    data_dir: Optional[str] = None
    smoothgrad_samples: int = 16
    ig_steps: int = 32
    visualization_steps: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.num_images < 1:
            raise ValueError(f"--num_images={self.num_images} must be at least 1")


def test_images(workdir: str, meta, num_images: int, data_dir=None):
    """The first ``num_images`` test images and labels of the dataset the run in ``workdir`` trained on."""
    path = os.path.join(workdir, SETTINGS_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            run_flags = json.load(file)
        name = run_flags["dataset"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot tell the run's dataset from {path} ({error}); pass --images=FILES") from None
    size = run_flags.get("image_size")  # [height, width]; a single int in records from before 2026-12-03
    size = (size, size) if isinstance(size, int) else size
    dataset = data.load(data.DataConfig(name, data_dir=data_dir or run_flags.get("data_dir"), batch_size=1,
                                        eval_batch_size=num_images, image_size=size))
    if dataset.info.class_names != meta.class_names:
        raise ValueError(f"the dataset {name} now has classes {list(dataset.info.class_names)}, the exported model "
                         f"{list(meta.class_names)}; pass --images=FILES")
    batch = next(dataset.eval_batches("test"))
    real = batch["mask"] > 0
    return batch["image"][real], batch["label"][real]


def image_files(paths, model, variables, meta):
    """The files as a batch, labelled with the model's own predictions (their true class is unknown)."""
    images = np.stack([data.read_image(p, meta.image_size, meta.image_shape[2]) for p in paths]) / np.float32(255)
    return images, np.asarray(jnp.argmax(model.apply(variables, images), axis=-1))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = cli.parse(Visualize())
        model, variables, meta = export.load_export(config.workdir)
        if config.images:
            images, labels = image_files(config.images, model, variables, meta)
        else:
            images, labels = test_images(config.workdir, meta, config.num_images, config.data_dir)
        index = write_gallery(model, variables, images, labels, meta.class_names,
                              os.path.join(config.workdir, GALLERY_DIR), rng=jax.random.key(config.seed),
                              layer=config.layer, smoothgrad_samples=config.smoothgrad_samples,
                              ig_steps=config.ig_steps, visualization_steps=config.visualization_steps,
                              title=f"What {meta.model_name} looks at ({config.workdir})")
    except (ValueError, data.DatasetUnavailableError) as error:  # each says what to fix
        sys.exit(f"error: {error}")
    print(f"gallery of {len(labels)} images: {index}")


if __name__ == "__main__":
    cli.define_flags(Visualize(), required=("workdir",))
    app.run(main)
