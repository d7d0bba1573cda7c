"""What a trained network looks at: `python -m experiments.visualize --workdir=runs/flowers`.

Loads the run's export (`<workdir>/export/`) and writes `<workdir>/gallery/index.html` with its PNGs
(`cnn_jax.interpret.write_gallery`): for the first `--num_images` test images of the run's dataset (read as the
run read it, from its flags.json), saliency, SmoothGrad, Integrated Gradients and Grad-CAM of `--layer` beside
the prediction; the first convolution's filters; the feature maps of every sown layer; and one
activation-maximization image per class. `--images=a.jpg,b.png` explains those files instead; their true
class being unknown, the gallery's "true" column repeats the prediction.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

from absl import app, flags  # noqa: E402

GALLERY_DIR = "gallery"

flags.DEFINE_string("workdir", None, "Run directory holding export/ and flags.json.", required=True)
flags.DEFINE_integer("num_images", 8, "Test images to explain.")
flags.DEFINE_list("images", [], "Image files to explain instead of test images.")
flags.DEFINE_string("layer", "features", "Grad-CAM layer: a sown name (features, stage3) or a module path.")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the run's.")
flags.DEFINE_integer("smoothgrad_samples", 16, "Noisy copies averaged by SmoothGrad.")
flags.DEFINE_integer("ig_steps", 32, "Steps along the Integrated Gradients path.")
flags.DEFINE_integer("visualization_steps", 128, "Optimization steps of each activation-maximization image.")
flags.DEFINE_integer("seed", 0, "Seed of SmoothGrad's noise and the visualizations' jitter.")
FLAGS = flags.FLAGS


def test_images(workdir: str, meta, num_images: int, data_dir=None):
    """The first ``num_images`` test images and labels of the dataset the run in ``workdir`` trained on."""
    from cnn_jax import data

    path = os.path.join(workdir, "flags.json")
    try:
        with open(path, encoding="utf-8") as file:
            run_flags = json.load(file)
        name = run_flags["dataset"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot tell the run's dataset from {path} ({error}); pass --images=FILES") from None
    size = run_flags.get("image_size")
    dataset = data.load(data.DataConfig(name, data_dir=data_dir or run_flags.get("data_dir"), batch_size=1,
                                        eval_batch_size=num_images, image_size=None if size is None else (size, size)))
    if dataset.info.class_names != meta.class_names:
        raise ValueError(f"the dataset {name} now has classes {list(dataset.info.class_names)}, the exported model "
                         f"{list(meta.class_names)}; pass --images=FILES")
    batch = next(dataset.eval_batches("test"))
    real = batch["mask"] > 0
    return batch["image"][real], batch["label"][real]


def image_files(paths, model, variables, meta):
    """The files as a batch, labelled with the model's own predictions (their true class is unknown)."""
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax import data

    images = np.stack([data.read_image(p, meta.image_size, meta.image_shape[2]) for p in paths]) / np.float32(255)
    return images, np.asarray(jnp.argmax(model.apply(variables, images), axis=-1))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.num_images < 1:
        raise app.UsageError("--num_images must be at least 1.")
    import jax

    from cnn_jax import export
    from cnn_jax.data import DatasetUnavailableError
    from cnn_jax.interpret.gallery import write_gallery

    try:
        model, variables, meta = export.load_export(FLAGS.workdir)
        if FLAGS.images:
            images, labels = image_files(FLAGS.images, model, variables, meta)
        else:
            images, labels = test_images(FLAGS.workdir, meta, FLAGS.num_images, FLAGS.data_dir)
        index = write_gallery(model, variables, images, labels, meta.class_names,
                              os.path.join(FLAGS.workdir, GALLERY_DIR), rng=jax.random.key(FLAGS.seed),
                              layer=FLAGS.layer, smoothgrad_samples=FLAGS.smoothgrad_samples,
                              ig_steps=FLAGS.ig_steps, visualization_steps=FLAGS.visualization_steps,
                              title=f"What {meta.model_name} looks at ({FLAGS.workdir})")
    except (ValueError, DatasetUnavailableError) as error:  # each says what to fix
        sys.exit(f"error: {error}")
    print(f"gallery of {len(labels)} images: {index}")


if __name__ == "__main__":
    app.run(main)
