"""Sanity checks of the saliency maps (Adebayo et al. 2018) on a trained run:
`python -m experiments.sanity --workdir=runs/mnist`.

Loads the run's export and its first `--num_images` test images (as `experiments.visualize` does), explains the
trained model's predictions with every method in `--methods`, randomizes the layers from the top (cascading) and
one at a time (independent), and compares the maps (`cnn_jax.interpret.sanity`). `--shuffled_workdir` names a run
of the same model trained on shuffled labels, for the data-randomization test. Writes
`<workdir>/gallery/sanity.html` with its figures, and `sanity.json` (the mean similarities) beside it.
"""
import dataclasses
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

from absl import app  # noqa: E402

from cnn_jax import cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sanity:
    """What to check, and how.

    Attributes:
      workdir: run directory holding export/ and flags.json.
      num_images: test images whose maps are compared.
      methods: attribution methods (cnn_jax.interpret.methods.METHODS).
      order: layers to randomize, top first; default: every top-level parameter group, output side first.
      shuffled_workdir: a run of the same model trained on shuffled labels (data randomization).
      independent: also randomize one layer at a time.
      layer: Grad-CAM layer.
      path_steps: path points of the integrated-gradient methods.
      smoothgrad_samples: noisy copies averaged by SmoothGrad.
      data_dir: TFDS data dir; default: the run's.
      seed: seed of the random weights and SmoothGrad's noise.
    """
    workdir: Optional[str] = None
    num_images: int = 32
    methods: tuple[str, ...] = ("gradient", "gradient_x_input", "guided_backprop", "integrated_gradients",
                                "smoothgrad", "grad_cam")
    order: tuple[str, ...] = ()
    shuffled_workdir: Optional[str] = None
    independent: bool = True
    layer: str = "features"
    path_steps: int = 32
    smoothgrad_samples: int = 16
    data_dir: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        from cnn_jax.interpret.methods import check_methods

        if self.num_images < 1:
            raise ValueError(f"--num_images={self.num_images} must be at least 1")
        check_methods(self.methods)  # before anything is loaded


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax
    import jax.numpy as jnp

    from cnn_jax import data, export
    from cnn_jax.interpret.gallery import write_sanity_page
    from cnn_jax.interpret.methods import Settings
    from cnn_jax.interpret.sanity import sanity_checks
    from experiments.visualize import GALLERY_DIR, test_images

    try:
        config = cli.parse(Sanity())
        model, variables, meta = export.load_export(config.workdir)
        shuffled = None
        if config.shuffled_workdir:
            shuffled_model, shuffled, _ = export.load_export(config.shuffled_workdir)
            if shuffled_model != model:
                raise ValueError(f"--shuffled_workdir={config.shuffled_workdir} holds another model "
                                 f"({type(shuffled_model).__name__}) than --workdir; train the same one")
        images, _ = test_images(config.workdir, meta, config.num_images, config.data_dir)
        images = jnp.asarray(images)
        predictions = jnp.argmax(model.apply(variables, images), axis=-1)
        settings = Settings(smoothgrad_samples=config.smoothgrad_samples, path_steps=config.path_steps,
                            layer=config.layer)
        result = sanity_checks(model, variables, images, predictions, jax.random.key(config.seed),
                               methods=config.methods, order=config.order or None, shuffled_variables=shuffled,
                               independent=config.independent, settings=settings)
        page = write_sanity_page(result, images[0], os.path.join(config.workdir, GALLERY_DIR),
                                 title=f"Sanity checks of {meta.model_name}'s maps ({config.workdir})")
    except (ValueError, data.DatasetUnavailableError) as error:  # each says what to fix
        sys.exit(f"error: {error}")
    print(f"sanity checks of {len(images)} images, {len(result.methods)} methods, layers {list(result.order)}: {page}")


if __name__ == "__main__":
    cli.define_flags(Sanity(), required=("workdir",))
    app.run(main)
