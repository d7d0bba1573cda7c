"""Faithfulness of the attribution maps (deletion and insertion, Petsiuk et al. 2018) on a trained run:
`python -m experiments.faithfulness --workdir=runs/mnist`.

Loads the run's export and its first `--num_images` test images (as `experiments.visualize` does), explains the
trained model's predictions with every method in `--methods` and ranks the pixels by each map, beside a random
ranking and the image's edges (`cnn_jax.interpret.faithfulness`). Writes `<workdir>/gallery/faithfulness.html`
with the mean curves and the table, and `faithfulness.json` beside it; prints the table (markdown) and the time
the whole evaluation took.
"""
import dataclasses
import os
import sys
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only reads data: quiet its logs.

from absl import app  # noqa: E402

from cnn_jax import cli  # noqa: E402
from cnn_jax.interpret.methods import METHODS, check_methods  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """What to score, and how.

    Attributes:
      workdir: run directory holding export/ and flags.json.
      num_images: test images whose maps are scored.
      methods: attribution methods (cnn_jax.interpret.methods.METHODS).
      steps: points of each deletion and insertion curve after the first.
      blur_sigma: width in pixels of the Gaussian blur insertion starts from.
      chunk: images explained and scored per jitted call.
      layer: Grad-CAM layer.
      path_steps: path points of the integrated-gradient methods.
      smoothgrad_samples: noisy copies averaged by SmoothGrad.
      data_dir: TFDS data dir; default: the run's.
      seed: seed of SmoothGrad's noise, the random ranking and the order of ties.
    """
    workdir: Optional[str] = None
    num_images: int = 1000
    methods: tuple[str, ...] = METHODS
    steps: int = 32
    blur_sigma: float = 5.0
    chunk: int = 100
    layer: str = "features"
    path_steps: int = 32
    smoothgrad_samples: int = 16
    data_dir: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        if self.num_images < 1:
            raise ValueError(f"--num_images={self.num_images} must be at least 1")
        check_methods(self.methods)  # before anything is loaded


def markdown_table(summary: dict) -> str:
    """The table of ``faithfulness.summary`` as markdown rows, as RESULTS.md records it."""
    from cnn_jax.interpret.gallery import FAITHFULNESS_HEADER, faithfulness_rows

    def cell(value):
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(FAITHFULNESS_HEADER) + " |", "|" + "---|" * len(FAITHFULNESS_HEADER)]
    for row in faithfulness_rows(summary):
        row[-1] = f"{row[-1]:.1f}"
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax
    import jax.numpy as jnp

    from cnn_jax import data, export
    from cnn_jax.interpret import faithfulness
    from cnn_jax.interpret.gallery import write_faithfulness_page
    from cnn_jax.interpret.methods import Settings
    from cnn_jax.workdir_files import GALLERY_DIR
    from experiments.visualize import test_images

    try:
        config = cli.parse(Faithfulness())
        model, variables, meta = export.load_export(config.workdir)
        images, _ = test_images(config.workdir, meta, config.num_images, config.data_dir)
        images = jnp.asarray(images)
        start = time.perf_counter()
        predictions = jnp.argmax(jax.jit(model.apply)(variables, images), axis=-1)
        settings = Settings(smoothgrad_samples=config.smoothgrad_samples, path_steps=config.path_steps,
                            layer=config.layer)
        result = faithfulness.faithfulness(model, variables, images, predictions, jax.random.key(config.seed),
                                           methods=config.methods, settings=settings, steps=config.steps,
                                           blur_sigma=config.blur_sigma, chunk=config.chunk)
        seconds = time.perf_counter() - start
        note = (f"curves of {config.steps} steps, insertion from a blur of {config.blur_sigma:g} px, the model's "
                f"predicted class explained; {seconds:.0f} s for the whole evaluation.")
        page = write_faithfulness_page(result, os.path.join(config.workdir, GALLERY_DIR),
                                       title=f"Faithfulness of {meta.model_name}'s maps ({config.workdir})",
                                       note=note)
    except (ValueError, data.DatasetUnavailableError) as error:  # each says what to fix
        sys.exit(f"error: {error}")
    print(markdown_table(faithfulness.summary(result)))
    print(f"faithfulness of {len(images)} images, {len(result.names)} rankings: {seconds:.1f} s; {page}")


if __name__ == "__main__":
    cli.define_flags(Faithfulness(), required=("workdir",))
    app.run(main)
