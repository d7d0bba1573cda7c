"""A browsable gallery of what a classifier looks at: PNG figures and an ``index.html`` linking them.

For a few test images: saliency, SmoothGrad, Integrated Gradients and Grad-CAM of the predicted class side by side
with the prediction; the first convolution's filters; the feature maps of every sown layer for the first image; one
activation-maximization image per class. ``write_sanity_page`` adds the sanity checks (``sanity.html``) and
``write_faithfulness_page`` the deletion and insertion scores (``faithfulness.html``) and ``write_feature_page``
feature visualization beside dataset examples (``features.html``) beside it; the index links every
such page present when it is written, and each page links the index when there is one.
"""
from __future__ import annotations

import html
import json
import pathlib
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.interpret import faithfulness, sanity
from cnn_jax.interpret.activation_maximization import (
    activation_maximization,
    channel,
    class_logit,
    objective_values,
)
from cnn_jax.interpret.dataset_examples import top_examples
from cnn_jax.interpret.grad_cam import grad_cam
from cnn_jax.interpret.integrated_gradients import integrated_gradients
from cnn_jax.interpret.saliency import saliency
from cnn_jax.interpret.smoothgrad import smoothgrad
from cnn_jax.interpret.taps import conv_layers, sown_layers
from cnn_jax.plots import interpret as plots
from cnn_jax.plots import sanity as sanity_plots
from cnn_jax.plots.faithfulness import plot_faithfulness_curves
from cnn_jax.plots.features import plot_feature_examples

ATTRIBUTIONS, FILTERS, FEATURE_MAPS, CLASSES = ("attributions.png", "filters.png", "feature_maps.png",
                                                "class_visualizations.png")
INDEX, SANITY = "index.html", "sanity.html"
SANITY_MAPS, SANITY_CURVES, SANITY_JSON = "sanity_maps.png", "sanity_curves.png", "sanity.json"
FAITHFULNESS, FAITHFULNESS_CURVES = "faithfulness.html", "faithfulness_curves.png"
FAITHFULNESS_JSON = "faithfulness.json"
FEATURES, FEATURE_CHANNELS, FEATURE_CLASSES = "features.html", "feature_channels.png", "feature_classes.png"
PAGES = {SANITY: "Sanity checks: do the maps depend on the weights and the labels?",
         FAITHFULNESS: "Faithfulness: do the pixels a map ranks first drive the prediction?",
         FEATURES: "Feature visualization beside the dataset examples that excite each unit most"}


def _params_at(params: Mapping, path: str):
    for key in path.split("/"):
        params = params[key]
    return params


def _page(title: str, sections: Sequence[tuple]) -> str:
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}"
            "td,th{padding:0.2em 0.8em;text-align:left}.wrong{color:#c00}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _prediction_table(labels, predictions, confidence, class_names) -> str:
    rows = []
    for i, (label, prediction, p) in enumerate(zip(labels, predictions, confidence, strict=True)):
        css = "" if label == prediction else " class=\"wrong\""
        rows.append(f"<tr{css}><td>{i}</td><td>{html.escape(class_names[label])}</td>"
                    f"<td>{html.escape(class_names[prediction])}</td><td>{p:.3f}</td></tr>")
    return ("<table><tr><th>image</th><th>true</th><th>predicted</th><th>confidence</th></tr>\n"
            + "\n".join(rows) + "</table>")


def write_gallery(model: nn.Module, variables: Mapping, images, labels, class_names: Sequence[str],
                  out_dir, *, rng: jax.Array, layer: str = "features", smoothgrad_samples: int = 16,
                  ig_steps: int = 32, visualization_steps: int = 128, max_channels: int = 8,
                  title: str = "What the network looks at") -> pathlib.Path:
    """Writes the gallery of ``model`` on ``images`` (N, H, W, C in [0, 1]) with true ``labels`` into ``out_dir``;
    returns the path of its ``index.html``. Attributions explain the predicted class; Grad-CAM reads ``layer``."""
    images = jnp.asarray(images, jnp.float32)
    labels = np.asarray(labels)
    class_names = list(class_names)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"write_gallery needs NHWC images and one label each, got {images.shape} and {labels.shape}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    smooth_key, visualization_key = jax.random.split(rng)

    @jax.jit  # one compilation for the four methods; the variables are arguments, not constants
    def explain_predictions(variables, images, rng):
        def f(x):
            return model.apply(variables, x)
        logits = f(images)
        targets = jnp.argmax(logits, axis=-1)
        return logits, (saliency(f, images, targets),
                        smoothgrad(saliency, f, images, targets, rng, num_samples=smoothgrad_samples),
                        integrated_gradients(f, images, targets, steps=ig_steps),
                        grad_cam(model, variables, images, targets, layer))

    logits, maps = explain_predictions(variables, images, smooth_key)  # a tuple: jit would sort a dict's keys
    names = ("saliency", "SmoothGrad", "Integrated Gradients", f"Grad-CAM ({layer})")
    attributions = dict(zip(names, maps, strict=True))
    if logits.shape[-1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for a model with {logits.shape[-1]} classes")
    predictions = np.asarray(jnp.argmax(logits, axis=-1))
    confidence = np.asarray(jax.nn.softmax(logits)).max(axis=-1)
    titles = [f"{class_names[p]} {c:.2f}" + ("" if p == t else f" (true {class_names[t]})")
              for p, c, t in zip(predictions, confidence, labels, strict=True)]
    plots.plot_attributions(images, attributions, out_dir / ATTRIBUTIONS, titles)

    convolutions = conv_layers(model, variables, images[:1])
    if convolutions:  # an MLP has none
        plots.plot_filters(_params_at(variables["params"], convolutions[0])["kernel"], out_dir / FILTERS,
                           title=f"filters of {convolutions[0]}")

    _, state = model.apply(variables, images[:1], mutable=["intermediates"])
    maps = {}  # a map sown under several names (the last stage is also "features") is drawn once
    for name in sown_layers(model, variables, images[:1]):
        value = _params_at(state["intermediates"], name)[0]
        same = [other for other, known in maps.items() if known is value]
        if same:
            maps[f"{same[0]} = {name}"] = maps.pop(same[0])
        elif value.ndim == 4:
            maps[name] = value
    maps = {name: value[0] for name, value in maps.items()}
    plots.plot_feature_maps(maps, out_dir / FEATURE_MAPS, max_channels, image=images[0])

    visualize = jax.jit(lambda variables, rng: activation_maximization(
        model, variables, class_logit(range(len(class_names))), images.shape[1:], rng, steps=visualization_steps))
    visualization = visualize(variables, visualization_key)
    plots.plot_image_grid(visualization.images, out_dir / CLASSES, class_names,
                          title="images maximizing each class logit")

    figure = "<img src=\"{}\" alt=\"{}\">".format
    sections = [("Attributions of the predicted class", _prediction_table(labels, predictions, confidence, class_names)
                 + "\n<p>" + figure(ATTRIBUTIONS, "attributions") + "</p>")]
    if convolutions:
        sections.append(("Learned filters", figure(FILTERS, "filters")))
    sections += [("Feature maps of image 0", figure(FEATURE_MAPS, "feature maps")),
                 ("Activation maximization", figure(CLASSES, "class visualizations"))]
    sections.append(("More pages", _page_list(out_dir)))
    page = _page(title, sections)
    index = out_dir / INDEX
    index.write_text(page)
    return index


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value):
        return "&ndash;" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def write_sanity_page(result, image, out_dir, title: str = "Sanity checks of the saliency maps") -> pathlib.Path:
    """Writes ``sanity.html`` into the gallery ``out_dir`` with the figures of a ``sanity.SanityResult`` (the maps of
    ``image`` as the layers go random, the similarity curves), its summary as tables and ``sanity.json``; returns
    the page's path. It links the gallery's index when there is one."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = sanity.summary(result)
    sanity_plots.plot_sanity_maps(result, image, out_dir / SANITY_MAPS)
    sanity_plots.plot_sanity_curves(summary, out_dir / SANITY_CURVES)
    (out_dir / SANITY_JSON).write_text(json.dumps(summary, indent=1) + "\n")
    labels = sanity_plots.cascade_labels(result.order)
    figure = "<img src=\"{}\" alt=\"{}\">".format
    intro = ("<p>Adebayo et al., <i>Sanity Checks for Saliency Maps</i> (NeurIPS 2018): a map that stays the same "
             "when the weights are random, or when the model learned shuffled labels, shows the input rather than "
             "the model. Each number is the mean over the images of the similarity between the trained model's map "
             "and the randomized model's (1: the same ranking).</p>")
    sections = [("Maps as the layers go random", intro + figure(SANITY_MAPS, "maps under cascading randomization")),
                ("Similarity curves", figure(SANITY_CURVES, "similarity curves"))]
    tests = (("cascading", "Cascading randomization (top down)", labels),
             ("independent", "Independent randomization (one layer)", ["trained", *result.order]))
    for test, heading, columns in tests:
        if summary[test] is not None:
            rows = [[name, metric, *values] for name, row in summary[test].items() for metric, values in row.items()]
            sections.append((heading, _table(["method", "metric", *columns], rows)))
    if summary["data_randomization"] is not None:
        rows = [[name, *row.values()] for name, row in summary["data_randomization"].items()]
        sections.append(("Data randomization (trained on shuffled labels)",
                         _table(["method", *next(iter(summary["data_randomization"].values()))], rows)))
    return _write_page(out_dir / SANITY, title, sections)


_LIST_START, _LIST_END = "<!-- pages -->", "<!-- /pages -->"


def _page_list(out_dir: pathlib.Path) -> str:
    """The index's list of the pages of ``PAGES`` present in ``out_dir``, between markers ``_write_page`` finds."""
    pages = [f"<li><a href=\"{name}\">{html.escape(text)}</a></li>" for name, text in PAGES.items()
             if (out_dir / name).exists()]
    return f"{_LIST_START}<ul>{''.join(pages)}</ul>{_LIST_END}" if pages else f"{_LIST_START}none yet{_LIST_END}"


def _write_page(page: pathlib.Path, title: str, sections: list) -> pathlib.Path:
    """Writes a page of the gallery beside its index: linking the index when there is one, and brought into the
    index's list of pages (so pages written after the index are linked from it too)."""
    index = page.parent / INDEX
    if not index.exists():
        page.write_text(_page(title, sections))
        return page
    page.write_text(_page(title, sections + [("Gallery", f"<p><a href=\"{INDEX}\">the rest of the gallery</a></p>")]))
    text = index.read_text()
    start, end = text.find(_LIST_START), text.find(_LIST_END)
    if 0 <= start < end:
        index.write_text(text[:start] + _page_list(page.parent) + text[end + len(_LIST_END):])
    return page


def faithfulness_rows(summary: dict) -> list:
    """One row per method and baseline: name, deletion AUC, its standard error, insertion AUC, its standard error,
    seconds (``faithfulness.summary``'s numbers)."""
    return [[name, row["deletion_auc"], row["deletion_auc_sem"], row["insertion_auc"], row["insertion_auc_sem"],
             row["seconds"]] for name, row in summary["methods"].items()]


FAITHFULNESS_HEADER = ("method", "deletion AUC", "± s.e.", "insertion AUC", "± s.e.", "seconds")


def write_faithfulness_page(result, out_dir, title: str = "Faithfulness of the attribution maps",
                            note: str = "") -> pathlib.Path:
    """Writes ``faithfulness.html`` into the gallery ``out_dir`` with the curves of a
    ``faithfulness.FaithfulnessResult``, its table and ``faithfulness.json``; returns the page's path. ``note``
    (HTML) says how the result was made."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = faithfulness.summary(result)
    plot_faithfulness_curves(summary, out_dir / FAITHFULNESS_CURVES)
    (out_dir / FAITHFULNESS_JSON).write_text(json.dumps(summary, indent=1) + "\n")
    intro = ("<p>Petsiuk et al., <i>RISE</i> (BMVC 2018): deletion turns the pixels a map ranks first black and "
             "follows the probability of the explained class (a faithful map makes it fall fast: low AUC); insertion "
             "restores them onto a blurred copy (high AUC). <i>random</i> ranks the pixels at random and "
             f"<i>edges</i> by the image's Sobel gradient: neither knows the model. {summary['images']} images; "
             f"{note}</p>")
    sections = [("Deletion and insertion curves", intro + f"<img src=\"{FAITHFULNESS_CURVES}\" alt=\"deletion and "
                 "insertion curves\">"),
                ("Areas under the curves", _table(FAITHFULNESS_HEADER, faithfulness_rows(summary)))]
    return _write_page(out_dir / FAITHFULNESS, title, sections)


def write_feature_page(model: nn.Module, variables: Mapping, batches, out_dir, *, image_shape, layer: str,
                       channels: Sequence[int], classes: Sequence[int], class_names: Sequence[str], rng: jax.Array,
                       copies: int = 3, examples: int = 4, steps: int = 256, diversity: float = 10.0,
                       source: str = "", title: str = "Feature visualization beside dataset examples") -> pathlib.Path:
    """Writes ``features.html`` into the gallery ``out_dir``: for each of ``channels`` of ``layer`` and each of
    ``classes``, ``copies`` images optimized for it (``activation_maximization``, kept apart by a ``diversity`` term
    in the style of ``layer``) beside the ``examples`` natural images of ``batches`` that excite it most
    (``top_examples``, one pass; ``source`` names them on the page). Returns the page's path."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels, classes, class_names = list(channels), list(classes), list(class_names)
    if copies < 1 or not channels + classes:
        raise ValueError(f"write_feature_page needs copies >= 1 and some channels or classes, got copies={copies}, "
                         f"channels={channels}, classes={classes}")
    groups = []  # (figure, objective, row titles, heading) of the channels, then of the classes
    if channels:
        groups.append((FEATURE_CHANNELS, channel(layer, channels), [f"{layer} [{c}]" for c in channels],
                       f"Channels of {layer}"))
    if classes:
        groups.append((FEATURE_CLASSES, class_logit(classes),
                       [class_names[c] if c < len(class_names) else f"class {c}" for c in classes], "Classes"))
    found = top_examples(model, variables, [group[1] for group in groups], batches, examples)
    intro = ("<p>Olah et al., <i>Feature Visualization</i> (Distill 2017): on the left, images optimized to excite "
             f"the unit ({copies} per unit, pushed apart by a diversity term); on the right, the natural images "
             f"{html.escape(source)} that excite it most. Each number is the unit's value on that image (a channel's "
             "mean over positions, or a class logit).</p>")
    sections = []
    for index, ((figure, objective, titles, heading), best) in enumerate(zip(groups, found, strict=True)):
        repeated = objective._replace(indices=tuple(i for i in objective.indices for _ in range(copies)))
        # ReLUs redirected at every step (not only Lucid's first 16), by Lucid's rule: in a layer whose plain
        # gradient is exactly zero for an image (activation_maximization's docstring)
        optimize = jax.jit(lambda v, key, repeated=repeated: activation_maximization(
            model, v, repeated, tuple(image_shape), key, steps=steps, diversity=diversity if copies > 1 else 0.0,
            diversity_layer=layer if repeated.kind == "logit" else None, redirect_steps=steps))
        images = optimize(variables, jax.random.fold_in(rng, index)).images
        values = np.asarray(jax.jit(lambda v, x, repeated=repeated: objective_values(model, v, repeated, x))(
            variables, images))
        units = len(objective.indices)
        plot_feature_examples(np.asarray(images).reshape(units, copies, *images.shape[1:]),
                              values.reshape(units, copies), best.images, best.values, titles, out_dir / figure)
        sections.append((heading, (intro if not sections else "") + f"<img src=\"{figure}\" alt=\"{heading}\">"))
    return _write_page(out_dir / FEATURES, title, sections)
