"""What a trained network looks at: `python -m experiments.visualize --workdir=runs/flowers`.

Loads the run's export (`<workdir>/export/`) and writes `<workdir>/gallery/index.html` with its PNGs
(`cnn_jax.interpret.write_gallery`): for the first `--num_images` test images of the run's dataset (read as the
run read it, from its flags.json), saliency, SmoothGrad, Integrated Gradients and Grad-CAM of `--layer` beside
the prediction; the first convolution's filters; the feature maps of every sown layer; and one
activation-maximization image per class. `--images=a.jpg,b.png` explains those files instead; their true
class being unknown, the gallery's "true" column repeats the prediction.

Beside it, `features.html` (`write_feature_page`): `--copies` images optimized for each of `--channels` of
`--feature_layer` and for each of `--classes`, next to the natural images that excite each most among the first
`--num_examples` of `--examples_split` of `--examples_dataset` (a tfds name or an image folder; default the run's
dataset). `--pretrained=efficientnet_lite0 --examples_dataset=tf_flowers` makes that page for a pretrained
ImageNet model (`cnn_jax.pretrained`, offline weights) instead of a run, into `<workdir>/gallery/`. A channel of a
ReLU6 map can end off (0) or saturated (6) at every position, where its gradient is zero and the image stops
moving: as Lucid visualizes its `*_pre_relu` layers, name the BatchNorm before the activation
(`--feature_layer=head_conv/bn`, EfficientNet-Lite's last map before its ReLU6; RESULTS.md).
"""
import dataclasses
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402

from cnn_jax import cli, data, export, run  # noqa: E402
from cnn_jax.interpret.gallery import write_feature_page, write_gallery  # noqa: E402
from cnn_jax.interpret.taps import tap  # noqa: E402
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
      pretrained: a cnn_jax.pretrained ImageNet model to make the feature page for, instead of the run's export.
      examples_dataset: tfds name or image folder of the dataset examples; default: the run's dataset.
      examples_split: split of examples_dataset the examples come from.
      num_examples: images of that split searched for the examples (the first ones).
      feature_layer: layer whose channels the feature page shows.
      channels: channels of feature_layer to show; default: 6 spread over the layer.
      classes: classes to show; default: the 4 predicted most often on the first batch of examples.
      copies: optimized images per channel or class, kept apart by the diversity term.
      diversity: weight of the diversity term (Lucid's): how far the copies are pushed apart.
      feature_steps: optimization steps of each image of the feature page.
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
    pretrained: Optional[str] = None
    examples_dataset: Optional[str] = None
    examples_split: str = "test"
    num_examples: int = 1024
    feature_layer: str = "features"
    channels: tuple[str, ...] = ()  # comma-separated channel indices
    classes: tuple[str, ...] = ()  # comma-separated class indices
    copies: int = 3
    diversity: float = 10.0
    feature_steps: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("num_images", "num_examples", "copies", "feature_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be at least 1")
        for name in ("channels", "classes"):
            if not all(value.isdigit() for value in getattr(self, name)):
                raise ValueError(f"--{name}={','.join(getattr(self, name))} must be comma-separated indices (0 or "
                                 "more), e.g. 0,5,12")
        if self.pretrained and not self.examples_dataset:
            raise ValueError(f"--pretrained={self.pretrained} needs --examples_dataset (a tfds name such as "
                             "tf_flowers, or an image folder) to find its dataset examples in")


def test_images(workdir: str, meta, num_images: int, data_dir=None):
    """The first ``num_images`` test images and labels of the dataset the run in ``workdir`` trained on."""
    run_flags = run_flags_of(workdir)  # ValueError naming the file when it is damaged
    name = run_flags.get("dataset")
    if not name:
        raise ValueError(f"cannot tell the run's dataset: {os.path.join(workdir, SETTINGS_FILE)} records none; "
                         "pass --images=FILES")
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


def examples_source(config: Visualize, run_flags: dict, image_size, batch_size: int = 32):
    """(a function returning batches of the first ``config.num_examples`` images of the examples' split, read at
    ``image_size``; a description for the page)."""
    name = config.examples_dataset or run_flags.get("dataset")
    if not name:
        raise ValueError("cannot tell which images to search for dataset examples; pass --examples_dataset")
    dataset = data.load(data.DataConfig(name, data_dir=config.data_dir or run_flags.get("data_dir"), batch_size=1,
                                        eval_batch_size=batch_size, image_size=image_size))

    def first_batches():
        seen = 0
        for batch in dataset.eval_batches(config.examples_split):
            if seen >= config.num_examples:
                return
            keep = np.arange(len(batch["mask"])) < config.num_examples - seen
            seen += int(batch["mask"].sum())
            yield {**batch, "mask": batch["mask"] * keep}

    return first_batches, f"among the first {config.num_examples} of {name}'s {config.examples_split} split"


def run_flags_of(workdir: str) -> dict:
    """The run's recorded flags (empty when it has none); ValueError naming the file when the record is damaged."""
    return run.read_settings(workdir) or {}


def feature_page(config: Visualize, model, variables, image_shape, class_names, title: str):
    """Writes the feature page of ``config`` into the workdir's gallery; returns its path."""
    run_flags = {} if config.pretrained else run_flags_of(config.workdir)
    # the run's own images as the run read them; other images at the model's input size
    size = run_flags.get("image_size") if run_flags and not config.examples_dataset else tuple(image_shape[:2])
    batches, source = examples_source(config, run_flags, (size, size) if isinstance(size, int) else size)
    layer_shape = jax.eval_shape(lambda x: tap(model, variables, config.feature_layer)(x)[1],
                                 jnp.zeros((1, *image_shape), jnp.float32)).shape
    channels = tuple(int(c) for c in config.channels or np.linspace(0, layer_shape[-1] - 1, 6).round())
    classes = tuple(int(c) for c in config.classes)
    if not classes:
        first = next(iter(batches()))
        predicted = np.asarray(jnp.argmax(jax.jit(model.apply)(variables, first["image"]), axis=-1))
        predicted = predicted[np.asarray(first["mask"]) > 0]
        counts = np.bincount(predicted, minlength=1)
        classes = tuple(int(c) for c in np.argsort(-counts, kind="stable")[:min(4, np.count_nonzero(counts))])
    return write_feature_page(model, variables, batches(), os.path.join(config.workdir, GALLERY_DIR),
                              image_shape=image_shape, layer=config.feature_layer, channels=channels,
                              classes=classes, class_names=class_names, rng=jax.random.key(config.seed + 1),
                              copies=config.copies, steps=config.feature_steps, diversity=config.diversity,
                              source=source, title=title)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = cli.parse(Visualize())
        if config.pretrained:
            from cnn_jax import pretrained
            model, variables = pretrained.load_pretrained(config.pretrained)
            size = pretrained.pretrained_spec(config.pretrained).image_size
            page = feature_page(config, model, variables, (size, size, 3), [],
                                f"What {config.pretrained} (ImageNet) responds to")
            print(f"feature page of {config.pretrained}: {page}")
            return
        model, variables, meta = export.load_export(config.workdir)
        if config.images:
            images, labels = image_files(config.images, model, variables, meta)
        else:
            images, labels = test_images(config.workdir, meta, config.num_images, config.data_dir)
        title = f"What {meta.model_name} looks at ({config.workdir})"
        index = write_gallery(model, variables, images, labels, meta.class_names,
                              os.path.join(config.workdir, GALLERY_DIR), rng=jax.random.key(config.seed),
                              layer=config.layer, smoothgrad_samples=config.smoothgrad_samples,
                              ig_steps=config.ig_steps, visualization_steps=config.visualization_steps, title=title)
        features = feature_page(config, model, variables, meta.image_shape, meta.class_names,
                                f"What {meta.model_name}'s units respond to ({config.workdir})")
    except (ValueError, data.DatasetUnavailableError) as error:  # each says what to fix
        sys.exit(f"error: {error}")
    print(f"gallery of {len(labels)} images: {index} (and {features.name})")


if __name__ == "__main__":
    cli.define_flags(Visualize(), required=("workdir",))
    app.run(main)
