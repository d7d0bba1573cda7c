"""The input statistics a network trained from scratch normalizes by (`Training.normalization`)."""
from __future__ import annotations

import logging
import math
from typing import Optional

import jax

from cnn_jax import data
from cnn_jax.files import json_excerpt, read_json, write_json
from cnn_jax.run.config import Training
from cnn_jax.workdir_files import NORMALIZATION_FILE, entry_path

log = logging.getLogger(__name__)

# The statistics are a function of the training images and the seed, so a damaged record is recomputed as it was.
_FIX = "delete it and rerun: the statistics are computed again from the same training images"


def normalized(config: Training, dataset, workdir: str, model_kwargs: dict) -> dict:
    """`model_kwargs` with the input statistics of `config.normalization`: for "data", the training images'
    per-channel mean and std, computed at the first start and read back from the workdir after (unless the
    kwargs fix them, as a study's arms may). The export pins them either way.

    Raises ValueError naming the record when it is not one: not JSON, not an object, or a mean and std that are
    not one finite number per channel (std positive)."""
    if config.normalization == "model" or "mean" in model_kwargs or "std" in model_kwargs:
        return model_kwargs
    path = entry_path(workdir, NORMALIZATION_FILE)
    try:
        stats = read_json(path, _FIX)
    except FileNotFoundError:
        mean, std = data.channel_statistics(dataset)
        stats = {"mean": mean, "std": std, "images": min(data.STATISTICS_IMAGES, dataset.info.num_train)}
        if jax.process_index() == 0:
            write_json(path, stats)
    else:
        problem = _problem(stats, dataset.info.image_shape[-1])
        if problem:
            raise ValueError(f"{path} is not a normalization record ({problem}): {_FIX}")
    log.info("normalizing by the training images' mean %s and std %s",
             [round(m, 4) for m in stats["mean"]], [round(s, 4) for s in stats["std"]])
    return {**model_kwargs, "mean": tuple(stats["mean"]), "std": tuple(stats["std"])}


def _problem(stats, channels: int) -> Optional[str]:
    """What makes ``stats`` not a record of ``channels`` means and standard deviations, or None."""
    if not isinstance(stats, dict):
        return f"it holds {json_excerpt(stats)}, not a JSON object"
    for key in ("mean", "std"):
        values = stats.get(key)
        if not (isinstance(values, list) and len(values) == channels
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            return f"{key!r} is {json_excerpt(values)}, not a list of {channels} finite numbers, one per channel"
    if min(stats["std"]) <= 0:
        return f"'std' is {json_excerpt(stats['std'])}: each must be positive"
    return None
