"""Classifies image files with a trained run's export: no training flags needed.

    python scripts/predict.py --workdir=runs/flowers photo.jpg more_photos/
    python scripts/predict.py --workdir=runs/flowers --top_k=3 --json photos/ > predictions.jsonl

Folders are searched recursively (hidden files passed over). Each image is resized as the run's training images
were (aspect kept, centre crop to the exported size). Per image, the text output is the path followed by one
indented "class probability" line per class, most likely first; `--json` prints one object per line instead:
{"path": ..., "top_k": [{"class": ..., "prob": ...}, ...]}. A file that cannot be read gets an error line
({"path": ..., "error": ...} with --json) and the others are still classified; the exit status is then 1.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only decodes images: quiet its logs.

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding export/ (any experiment's workdir).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per image (at most the model's).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per image instead of text.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.mark_flag_as_required("workdir")


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


def predict(model, variables, meta, paths, top_k: int, batch_size: int):
    """Yields {"path", "top_k": [{"class", "prob"}, ...]} or {"path", "error"} per path, in order."""
    import jax
    import numpy as np

    probabilities = jax.jit(lambda variables, images: jax.nn.softmax(model.apply(variables, images)))
    for batch in batches(paths, meta, batch_size):
        images = [image for _, image in batch if isinstance(image, np.ndarray)]
        if images:  # padded to a full batch: one compilation for every batch
            padded = np.zeros((batch_size, *meta.image_shape), np.float32)
            padded[:len(images)] = np.stack(images) / np.float32(255)
            probs = iter(np.asarray(probabilities(variables, padded))[:len(images)])
        for path, image in batch:
            if not isinstance(image, np.ndarray):
                yield {"path": path, "error": image.reason}
                continue
            p = next(probs)
            best = np.argsort(-p, kind="stable")[:top_k]
            yield {"path": path, "top_k": [{"class": meta.class_names[i], "prob": float(p[i])} for i in best]}


def format_text(result: dict) -> str:
    if "error" in result:
        return f"{result['path']}: error: {result['error']}"
    width = max(len(entry["class"]) for entry in result["top_k"])
    return "\n".join([result["path"]] + [f"  {entry['class']:<{width}}  {entry['prob']:.4f}"
                                         for entry in result["top_k"]])


def main(argv) -> None:
    if len(argv) < 2:
        raise app.UsageError("Name the images to classify: files or folders after the flags.")
    if _TOP_K.value < 1 or _BATCH_SIZE.value < 1:
        raise app.UsageError("--top_k and --batch_size must be positive.")
    from cnn_jax import export

    try:
        model, variables, meta = export.load_export(_WORKDIR.value)
    except export.ExportError as error:
        sys.exit(f"error: {error}")
    paths = list(image_paths(argv[1:]))
    if not paths:
        sys.exit(f"error: no files in {', '.join(argv[1:])}")
    failed = False
    for result in predict(model, variables, meta, paths, min(_TOP_K.value, len(meta.class_names)),
                          _BATCH_SIZE.value):
        failed |= "error" in result
        print(json.dumps(result) if _JSON.value else format_text(result), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
