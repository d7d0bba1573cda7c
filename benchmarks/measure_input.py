"""Measurements of the input side (BENCHMARKS.md): the pipeline's decode rate, and a command's peak memory.

  python benchmarks/measure_input.py --measure=pipeline --dataset=/tmp/folder_8000 --image_size=224 --batches=40
      decoded images/s of the streaming pipeline alone (cnn_jax.data, this process's train shards, uint8),
      after --warmup batches; --input=memory measures the in-memory path instead.
  python benchmarks/measure_input.py --measure=rss -- python -m experiments.transfer --dataset=/tmp/folder_8000 ...
      runs the command after `--` and samples the resident memory of its whole process tree (children included) every
      0.1 s; prints the peak of the sum, in MB (10^6 bytes), with the command's wall time and exit status.
"""
import dataclasses
import logging
import subprocess
import sys
import time
from typing import Literal, Optional

from absl import app

from cnn_jax import cli


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What to measure.

    Attributes:
      measure: pipeline (decoded images/s of the input pipeline alone) or rss (peak resident memory
        of the command given after --, over its process tree).
      dataset: pipeline: tfds name or image folder.
      data_dir: pipeline: the tfds data dir (default: tfds's, which honours $TFDS_DATA_DIR).
      image_size: pipeline: resize images to this side in pixels (0: the dataset's own size).
      batch_size: pipeline: images per batch.
      batches: pipeline: batches timed.
      warmup: pipeline: batches read before the clock starts.
      input: pipeline: stream (from disk as batches are read) or memory (decoded up front).
    """
    measure: Literal["pipeline", "rss"] = "pipeline"
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    image_size: int = 0
    batch_size: int = 32
    batches: int = 40
    warmup: int = 3
    input: Literal["stream", "memory"] = "stream"


def pipeline(args) -> None:
    from cnn_jax import data

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.dataset:
        raise app.UsageError("--measure=pipeline needs --dataset (a tfds name or an image folder)")
    size = (args.image_size, args.image_size) if args.image_size else None
    dataset = data.load(data.DataConfig(args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                                        image_size=size, input=args.input))
    batches = dataset.train_shards(0)
    for _ in range(args.warmup):
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(args.batches):
        images += len(next(batches)["label"])
    seconds = time.perf_counter() - start
    print(f"{images / seconds:,.1f} decoded images/s ({images} images of {dataset.info.image_shape} in "
          f"{seconds:.2f} s, batch {args.batch_size}, {'streaming' if dataset.streaming else 'in memory'})")


def rss(command: list) -> None:
    import psutil

    if not command:
        raise app.UsageError("--measure=rss needs the command to measure after --")
    start = time.time()
    proc = subprocess.Popen(command)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:  # a process ended while it was read
            pass
        peak = max(peak, total)
        time.sleep(0.1)
    print(f"peak RSS {peak / 1e6:,.0f} MB over the process tree; exit status {proc.returncode}, "
          f"{time.time() - start:.1f} s: {' '.join(command)}")
    sys.exit(proc.returncode)


def main(argv) -> None:
    args = cli.parse(Measurement())
    if args.measure == "pipeline":
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}: only --measure=rss takes a command")
        pipeline(args)
    else:
        rss(argv[1:])


if __name__ == "__main__":
    cli.define_flags(Measurement())
    app.run(main)
