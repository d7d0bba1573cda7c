"""Writes portable formats of a trained run's export, to run it without cnn_jax.

    python scripts/export.py --workdir=runs/mnist --format=onnx
    python scripts/export.py --workdir=runs/mnist --format=stablehlo,saved_model,tflite,onnx
    python scripts/export.py --workdir=runs/flowers --format=tflite --tflite_variant=int8

Artifacts go into ``<workdir>/export/`` (``model.stablehlo``, ``saved_model/``, ``model_<variant>.tflite``,
``model.onnx``); ``cnn_jax.export.portable`` says which route each format takes. The int8 TFLite variant is
calibrated on ``--calibration_examples`` training images of the workdir's dataset (the one its flags.json
records, or ``--calibration_dataset``). Bad input (an unknown format, a workdir without an export, a primitive
a format cannot express) gets one ``error:`` line and exit status 1.
"""
import dataclasses
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402

from cnn_jax import cli, data, export, run  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What to export from a run.

    Attributes:
      workdir: Run directory holding export/ (any experiment's workdir).
      format: Portable formats to write, comma-separated: stablehlo, saved_model, tflite, onnx.
      tflite_variant: TFLite variant: float32, dynamic_range (int8 weights) or int8 (int8 weights and activations).
      calibration_examples: Training images that calibrate the int8 TFLite variant.
      calibration_dataset: Dataset of the calibration images (tfds name or image folder); default: the workdir's.
      data_dir: TFDS data dir of the calibration dataset (default: $TFDS_DATA_DIR).
    """
    workdir: Optional[str] = None
    format: tuple[str, ...] = ("onnx",)
    tflite_variant: str = "float32"
    calibration_examples: int = 300
    calibration_dataset: Optional[str] = None
    data_dir: Optional[str] = None


def define_flags() -> None:
    cli.define_flags(ExportSettings(), required=("workdir",))


def calibration_images(settings: ExportSettings, meta):
    """``calibration_examples`` training images of the run's dataset, resized to the model's input."""
    dataset = settings.calibration_dataset
    if dataset is None:
        record = run.read_settings(settings.workdir)  # None for a workdir without one; ValueError if damaged
        dataset = (record or {}).get("dataset")
    if not dataset:
        raise export.ExportError(f"the int8 TFLite variant is calibrated on training images, and {settings.workdir} "
                          "records no dataset: pass --calibration_dataset=NAME_OR_FOLDER")
    config = data.DataConfig(dataset, data_dir=settings.data_dir, image_size=meta.image_size,
                             batch_size=settings.calibration_examples,
                             num_train_examples=settings.calibration_examples)
    images = next(iter(data.load(config).train_batches(0)))["image"]
    if images.shape[1:] != meta.image_shape:
        raise export.ExportError(f"calibration dataset {dataset} has images of shape {images.shape[1:]}, the model "
                          f"takes {meta.image_shape}")
    return images


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: everything is given by flags")
    settings = cli.parse(ExportSettings())
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every asset at INFO
    try:
        for fmt in settings.format:
            export.check_format(fmt, settings.tflite_variant)
        meta = export.read_meta(export.export_dir(settings.workdir), export.meta.rewrite_hint(settings.workdir))
        calibration = None
        if "tflite" in settings.format and settings.tflite_variant == "int8":
            calibration = calibration_images(settings, meta)
        for fmt in settings.format:
            path = export.export_format(settings.workdir, fmt, tflite_variant=settings.tflite_variant,
                                        calibration_images=calibration)
            print(f"{fmt}: {path}", flush=True)
    except (ValueError, data.DatasetUnavailableError) as error:  # ExportError, and bad settings
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
