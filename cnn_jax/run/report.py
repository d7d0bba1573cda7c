"""What a finished run leaves in its workdir, most important first: results.json, the export, the figures."""
from __future__ import annotations

import logging
import os

import jax

from cnn_jax import evaluation, export
from cnn_jax.files import write_json
from cnn_jax.workdir_files import FIGURES_DIR, RESULTS_FILE, entry_path

GRID_IMAGES = 24  # Test images in the prediction grid, up to half of them mistakes.
log = logging.getLogger(__name__)


def write_report(workdir: str, outcome, results: dict, dataset, model_name: str, model_kwargs: dict) -> None:
    """results.json, then the export, then the figures: what matters most is on disk first."""
    info = dataset.info
    write_json(os.path.join(workdir, RESULTS_FILE), results)
    export.save_export(workdir, model_name, model_kwargs, jax.device_get(outcome.state.eval_variables),
                       class_names=info.class_names, image_shape=info.image_shape)
    write_figures(os.path.join(workdir, FIGURES_DIR), outcome, dataset)


def write_figures(directory: str, outcome, dataset) -> None:
    """Training curves, confusion matrix, per-class accuracy and a grid of test predictions; a figure
    that cannot be drawn is logged and skipped, since the run's results are already saved. A figure (or
    ``directory``) that is a symbolic link is such a figure: never drawn through (`cnn_jax.workdir_files`)."""
    from cnn_jax import plots  # matplotlib, imported once the run is over rather than before its first step

    names, test = dataset.info.class_names, outcome.test
    confusion = evaluation.confusion_matrix(test["labels"], test["predictions"], dataset.info.num_classes)

    def grid(path):
        images, labels, predictions = evaluation.grid_examples(
            dataset.eval_batches("test"), test["labels"], test["predictions"], GRID_IMAGES)
        plots.plot_prediction_grid(images, labels, predictions, names, path, max_images=GRID_IMAGES)

    figures = {
        "training_curves.png": lambda path: plots.plot_training_curves(outcome.history, path),
        "confusion_matrix.png": lambda path: plots.plot_confusion_matrix(confusion, names, path),
        "per_class_accuracy.png": lambda path: plots.plot_per_class_accuracy(
            evaluation.per_class_accuracy(confusion), names, path),
        "predictions.png": grid,
    }
    for name, draw in figures.items():
        if name == "training_curves.png" and not outcome.history:
            continue
        try:
            draw(entry_path(*os.path.split(os.path.abspath(directory)), name))
        except Exception as error:  # noqa: BLE001 - a figure must never cost the run its results.
            log.warning("figure %s skipped: %s: %s", name, type(error).__name__, error)


def summary(results: dict, workdir: str) -> str:
    """The line a finished command prints: test accuracy, time, speed, and where the results are."""
    if jax.process_index() != 0:
        return f"process {jax.process_index()} done; process 0 wrote the results"
    speed = results["train_images_per_sec"]  # 0 when the first call (compiling) was the only one
    return (f"test accuracy {results['test_accuracy']:.4f} in {results['wall_time_s']:.1f} s "
            f"({f'{speed:,.0f} train images/s' if speed else 'too few train calls to time'}); "
            f"results in {os.path.join(workdir, RESULTS_FILE)}")
