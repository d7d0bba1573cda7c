"""Classifies image files with a trained run's export: no training flags needed.

    python scripts/predict.py --workdir=runs/flowers photo.jpg more_photos/
    python scripts/predict.py --workdir=runs/flowers --top_k=3 --json photos/ > predictions.jsonl
    python scripts/predict.py --workdir=runs/flowers --runtime=tflite --tflite_variant=int8 photos/

Folders are searched recursively (hidden files passed over). Each image is resized as the run's training images
were (aspect kept, centre crop to the exported size). Per image, the text output is the path followed by one
indented "class probability" line per class, most likely first; `--json` prints one object per line instead:
{"path": ..., "top_k": [{"class": ..., "prob": ...}, ...]}. A file that cannot be read gets an error line
({"path": ..., "error": ...} with --json) and the others are still classified; the exit status is then 1.

``--runtime`` picks what runs the model: ``jax`` (the Flax model of export/), or an artifact that
scripts/export.py wrote: ``stablehlo``, ``tf`` (SavedModel), ``tflite`` (``--tflite_variant``) or ``onnx``. The
``tf``, ``tflite`` and ``onnx`` runtimes never import JAX (``cnn_jax.export.runtime``). A missing or corrupt
artifact, or a workdir without an export, gets one ``error:`` line and exit status 1.

Trust: an exported model is a program, and so is a workdir. Each artifact must have the SHA-256 that its
export's meta.json recorded when it was written, and its operations are inspected (no file, system or custom
ops), but whoever wrote the workdir wrote the sums too: run a workdir from someone else only as far as you would
run their code. To share a model, share its ONNX file (scripts/export.py --format=onnx): the smallest runtime
here, checked to hold only standard ONNX ops and no external data. Class names and paths are printed with
control characters escaped.
"""
import dataclasses
import json
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only decodes images: quiet its logs.

from absl import app  # noqa: E402

from cnn_jax import cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    """How to classify.

    Attributes:
      workdir: Run directory holding export/ (any experiment's workdir).
      top_k: How many classes to print per image (at most the model's).
      json: Print one JSON object per image instead of text.
      batch_size: Images per forward pass.
      runtime: What runs the model: jax, stablehlo, tf, tflite or onnx (the last four need scripts/export.py).
      tflite_variant: TFLite variant for --runtime=tflite: float32, dynamic_range or int8.
    """
    workdir: Optional[str] = None
    top_k: int = 5
    json: bool = False
    batch_size: int = 32
    runtime: str = "jax"
    tflite_variant: str = "float32"


def define_flags() -> None:
    cli.define_flags(PredictSettings(), required=("workdir",))


def image_paths(arguments):
    """Files as given, and every file below the folders given, in sorted order; missing paths kept (to fail
    one by one with a clear message)."""
    for argument in arguments:
        if not os.path.isdir(argument):
            yield argument
            continue
        for directory, subdirectories, files in os.walk(argument):
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
            yield from (os.path.join(directory, f) for f in sorted(files) if not f.startswith("."))


def batches(paths, meta, batch_size: int):
    """(path, uint8 image or UnreadableImageError) pairs, in batches of ``batch_size``."""
    from cnn_jax import data

    batch = []
    for path in paths:
        try:
            batch.append((path, data.read_image(path, meta.image_size, meta.image_shape[2])))
        except data.UnreadableImageError as error:
            batch.append((path, error))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def softmax(logits):
    import numpy as np

    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict(runtime, paths, top_k: int, batch_size: int):
    """Yields {"path", "top_k": [{"class", "prob"}, ...]} or {"path", "error"} per path, in order, with
    ``runtime`` (``cnn_jax.export.runtime.Runtime``) computing the logits."""
    import numpy as np

    meta = runtime.meta
    for batch in batches(paths, meta, batch_size):
        images = [image for _, image in batch if isinstance(image, np.ndarray)]
        if images:  # padded to a full batch: one compilation (or tensor allocation) for every batch
            padded = np.zeros((batch_size, *meta.image_shape), np.float32)
            padded[:len(images)] = np.stack(images) / np.float32(255)
            probs = iter(softmax(runtime.logits(padded))[:len(images)])
        for path, image in batch:
            if not isinstance(image, np.ndarray):
                yield {"path": path, "error": image.reason}
                continue
            p = next(probs)
            best = np.argsort(-p, kind="stable")[:top_k]
            yield {"path": path, "top_k": [{"class": meta.class_names[i], "prob": float(p[i])} for i in best]}


def printable(text: str) -> str:
    """``text`` with each non-printable character (ANSI escapes, newlines, ...) written as its Python escape, so a
    class or file name cannot move the cursor, recolour the terminal or fake another line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_text(result: dict) -> str:
    path = printable(result["path"])
    if "error" in result:
        return f"{path}: error: {printable(result['error'])}"
    classes = [printable(entry["class"]) for entry in result["top_k"]]
    width = max(map(len, classes))
    lines = [f"  {name:<{width}}  {entry['prob']:.4f}" for name, entry in zip(classes, result["top_k"])]
    return "\n".join([path] + lines)


def main(argv) -> None:
    if len(argv) < 2:
        raise app.UsageError("Name the images to classify: files or folders after the flags.")
    settings = cli.parse(PredictSettings())
    if settings.top_k < 1 or settings.batch_size < 1:
        raise app.UsageError("--top_k and --batch_size must be positive.")
    from cnn_jax.export import meta as meta_lib
    from cnn_jax.export import runtime as runtime_lib

    try:
        if settings.runtime in runtime_lib.JAX_FREE:
            runtime_lib.keep_jax_out()
        if settings.runtime == "tflite":
            meta_lib.check_format("tflite", settings.tflite_variant)
        runtime = runtime_lib.load_runtime(settings.workdir, settings.runtime, settings.tflite_variant)
    except meta_lib.ExportError as error:
        sys.exit(f"error: {printable(str(error))}")
    paths = list(image_paths(argv[1:]))
    if not paths:
        sys.exit(f"error: no files in {', '.join(argv[1:])}")
    failed = False
    try:
        for result in predict(runtime, paths, min(settings.top_k, len(runtime.meta.class_names)), settings.batch_size):
            failed |= "error" in result
            print(json.dumps(result) if settings.json else format_text(result), flush=True)
    except meta_lib.ExportError as error:
        sys.exit(f"error: {printable(str(error))}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
