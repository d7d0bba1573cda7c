"""CIFAR-10: `python -m experiments.cifar10 --workdir=runs/cifar10`.

The defaults are the cnn3 recipe (three conv-BN blocks with dropout): 30 epochs of Nesterov SGD
at batch 128 under a one-cycle schedule (peak 0.1 after 5 epochs), weight decay 5e-4, label
smoothing 0.1, random crop + flip, test-time flips; about 90 s an epoch on the 2-core CPU (625
images/s); 85.18% on the offline JPEG copy in 48 minutes (RESULTS.md).
Any zoo model runs with `--model`, e.g. resnet20. For accuracy per minute see
`experiments/cifar10_fast.py`.
"""
from absl import app

from experiments import common

RECIPE = common.Recipe(dataset="cifar10", model="cnn3", epochs=30, batch_size=128,
                       learning_rate=0.1, optimizer="nesterov", schedule="onecycle",
                       warmup_epochs=5, weight_decay=5e-4, label_smoothing=0.1,
                       augment=("crop", "flip"), test_time_flip=True)

if __name__ == "__main__":
    common.define_flags(RECIPE)
    app.run(common.main)
