"""The benchmark's figure: each framework's images/s relative to the fastest peer, per model and mode.

A peer is every framework but cnn_jax (torch eager, torch.compile, Keras/TF), so the fastest peer sits at 1.0
and cnn_jax's bar says how far ahead of it or behind it cnn_jax runs. One panel per model; within a panel one
group of bars per mode at its batch size (and dtype, where a run has both), one bar per framework. The records
are those `benchmark.py --out` writes; several files (a training run and inference runs at other batch sizes,
say) are drawn as one figure. The figure is built on matplotlib's Agg canvas, never through pyplot.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from matplotlib.figure import Figure

CNN_JAX = "cnn_jax"
LABELS = {"cnn_jax": "cnn_jax", "torch": "torch eager", "torch_compile": "torch.compile", "keras": "Keras/TF"}
COLORS = {"cnn_jax": "tab:red", "torch": "tab:gray", "torch_compile": "tab:blue", "keras": "tab:orange"}
COLUMNS, WIDTH_IN, ROW_HEIGHT_IN, DPI = 2, 10.0, 2.8, 100
RECORD_KEYS = ("framework", "model", "mode", "dtype", "batch_size", "images_per_sec")


def beside(out: str, suffix: str) -> str:
    """A file beside the records at `out`: `<out minus .json><suffix>` (".meta.json" for their metadata, ".png"
    for their figure)."""
    return out.removesuffix(".json") + suffix


def group_key(record: dict) -> tuple:
    """What a record is compared within: the same model, mode, batch size and dtype."""
    return record["model"], record["mode"], record["batch_size"], record["dtype"]


def relative_to_fastest_peer(records: Iterable[dict]) -> dict:
    """{(model, mode, batch_size, dtype): {framework: images/s over the fastest peer's}} for every group that
    has a peer; the fastest peer's own ratio is 1.0. Groups without a peer are left out."""
    speeds: dict = {}
    for record in records:
        speeds.setdefault(group_key(record), {})[record["framework"]] = record["images_per_sec"]
    ratios = {}
    for key, by_framework in speeds.items():
        fastest = max((speed for framework, speed in by_framework.items() if framework != CNN_JAX), default=0.0)
        if fastest > 0:
            ratios[key] = {framework: speed / fastest for framework, speed in by_framework.items()}
    return ratios


def load(paths: Sequence[str]) -> tuple[list, list]:
    """The records of every file in `paths`, merged, and the metadata beside each (`{}` where there is none).

    Raises ValueError naming the file and what is wrong with it."""
    records, metas = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read benchmark records {path} ({error}): give the JSON files that "
                             "benchmark.py --out wrote") from None
        if not isinstance(loaded, list) or not all(isinstance(r, dict) and set(RECORD_KEYS) <= set(r)
                                                   for r in loaded):
            raise ValueError(f"{path} is not a list of benchmark records with the keys {', '.join(RECORD_KEYS)} "
                             "(the file benchmark.py --out writes)")
        records += loaded
        meta, meta_path = {}, beside(path, ".meta.json")
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read benchmark metadata {meta_path}: {error}") from None
        metas.append(meta)
    return records, metas


def _mode_label(key: tuple, dtypes: set) -> str:
    _, mode, batch_size, dtype = key
    label = f"{mode}\nbatch {batch_size}"
    return label + (f"\n{dtype}" if len(dtypes) > 1 else "")


def _title(metas: Sequence[dict]) -> str:
    dates = sorted({str(meta["date"])[:10] for meta in metas if meta.get("date")})
    cpus = sorted({f"{meta['machine']['cpu']}, {meta['machine']['cpu_count']} CPUs" for meta in metas
                   if meta.get("machine")})
    when = f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else "".join(dates)
    where = "; ".join(filter(None, [when, *cpus]))
    return "images/s relative to the fastest peer (1.0: the fastest of torch eager, torch.compile, Keras/TF)" + (
        f"\n{where}" if where else "")


def draw(records: Sequence[dict], metas: Sequence[dict], path: str) -> str:
    """Draws the figure of `records` (with the dates and machines of `metas` in its title) as a PNG at `path`:
    one panel per model, COLUMNS to a row, WIDTH_IN inches wide and ROW_HEIGHT_IN (plus a title and legend
    inch) high per row, at DPI; returns `path`."""
    ratios = relative_to_fastest_peer(records)
    if not ratios:
        raise ValueError("no record has a peer to compare with: run at least one of torch, torch_compile, keras")
    models = list(dict.fromkeys(key[0] for key in ratios))
    frameworks = [f for f in LABELS if any(f in r for r in ratios.values())]
    dtypes = {key[3] for key in ratios}
    rows = -(-len(models) // COLUMNS)
    fig = Figure(figsize=(WIDTH_IN, ROW_HEIGHT_IN * rows + 1), layout="constrained")
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    for ax in axes[len(models):]:
        ax.set_visible(False)
    width = 0.8 / len(frameworks)
    top = max(max(r.values()) for r in ratios.values())
    for ax, model in zip(axes, models):
        keys = [key for key in ratios if key[0] == model]
        for i, framework in enumerate(frameworks):
            xs = [j + (i - (len(frameworks) - 1) / 2) * width for j, key in enumerate(keys) if framework in ratios[key]]
            ys = [ratios[key][framework] for key in keys if framework in ratios[key]]
            bars = ax.bar(xs, ys, width, color=COLORS[framework], label=LABELS[framework])
            if framework == CNN_JAX:
                ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(keys)), [_mode_label(key, dtypes) for key in keys], fontsize=8)
        ax.set_ylim(0, top * 1.18)
        ax.set_title(model, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), ncols=len(frameworks), loc="outside lower center", fontsize=8,
               frameon=False)
    fig.suptitle(_title(metas), fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
