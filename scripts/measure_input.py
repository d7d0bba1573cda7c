"""Measurements of the input side (BENCHMARKS.md): the pipeline's decode rate, and a command's peak memory.

  python scripts/measure_input.py pipeline --dataset=/tmp/folder_8000 --image_size=224 --batches=40
      decoded images/s of the streaming pipeline alone (cnn_jax.data, this process's train shards, uint8),
      after --warmup batches; --input=memory measures the in-memory path instead.
  python scripts/measure_input.py rss -- python -m experiments.transfer --dataset=/tmp/folder_8000 ...
      runs the command and samples the resident memory of its whole process tree (children included) every
      0.1 s; prints the peak of the sum, in MB (10^6 bytes), with the command's wall time and exit status.
"""
import argparse
import logging
import subprocess
import sys
import time


def pipeline(args) -> None:
    from cnn_jax import data

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size = None if args.image_size is None else (args.image_size, args.image_size)
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


def rss(args) -> None:
    import psutil

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("error: give the command to measure after --")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pipeline", help="decoded images/s of the input pipeline alone")
    p.add_argument("--dataset", required=True, help="tfds name or image folder")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=40, help="batches timed")
    p.add_argument("--warmup", type=int, default=3, help="batches read before the clock starts")
    p.add_argument("--input", default="stream", choices=("stream", "memory"))
    r = sub.add_parser("rss", help="peak resident memory of a command's process tree")
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    (pipeline if args.what == "pipeline" else rss)(args)


if __name__ == "__main__":
    main()
