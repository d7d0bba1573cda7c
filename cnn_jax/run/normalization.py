"""The input statistics a network trained from scratch normalizes by (`Training.normalization`)."""
from __future__ import annotations

import json
import logging
import os

import jax

from cnn_jax import data
from cnn_jax.files import write_json
from cnn_jax.run.config import Training
from cnn_jax.workdir_files import NORMALIZATION_FILE

log = logging.getLogger(__name__)


def normalized(config: Training, dataset, workdir: str, model_kwargs: dict) -> dict:
    """`model_kwargs` with the input statistics of `config.normalization`: for "data", the training images'
    per-channel mean and std, computed at the first start and read back from the workdir after (unless the
    kwargs fix them, as a study's arms may). The export pins them either way."""
    if config.normalization == "model" or "mean" in model_kwargs or "std" in model_kwargs:
        return model_kwargs
    path = os.path.join(workdir, NORMALIZATION_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    else:
        mean, std = data.channel_statistics(dataset)
        stats = {"mean": mean, "std": std, "images": min(data.STATISTICS_IMAGES, dataset.info.num_train)}
        if jax.process_index() == 0:
            write_json(path, stats)
    log.info("normalizing by the training images' mean %s and std %s",
             [round(m, 4) for m in stats["mean"]], [round(s, 4) for s in stats["std"]])
    return {**model_kwargs, "mean": tuple(stats["mean"]), "std": tuple(stats["std"])}
