"""CIFAR-10 fast: `python -m experiments.cifar10_fast --workdir=runs/cifar10_fast`.

The recipe for accuracy per CPU-minute, after airbench94 (Keller Jordan, 2024): its network at half width
(`airbench_half`: 32-128-128, 0.5M params, pooling straight after each stage's first conv), short
one-cycle Nesterov SGD at batch 512, label smoothing 0.2, random crop (2 px) + flip, and test-time
flipping. On the 2-core CPU: 88.7% on the offline JPEG copy of CIFAR-10 in 42 minutes for the whole command;
RESULTS.md has the time-to-accuracy curve.
"""
from absl import app

from experiments import common

RECIPE = common.Recipe(dataset="cifar10", model="airbench_half", epochs=24, batch_size=512,
                       learning_rate=0.4, optimizer="nesterov", schedule="onecycle",
                       warmup_epochs=3, weight_decay=5e-4, label_smoothing=0.2,
                       augment=("crop", "flip"), crop_padding=2, test_time_flip=True)

if __name__ == "__main__":
    common.define_flags(RECIPE)
    app.run(common.main)
