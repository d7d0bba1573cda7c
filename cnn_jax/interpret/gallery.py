"""A browsable gallery of what a classifier looks at: PNG figures and an ``index.html`` linking them.

For a few test images: saliency, SmoothGrad, Integrated Gradients and Grad-CAM of the predicted class side by side
with the prediction; the first convolution's filters; the feature maps of every sown layer for the first image; one
activation-maximization image per class. ``write_sanity_page`` adds the sanity checks (``sanity.html``) beside it;
the index links every such page present when it is written.
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

from cnn_jax.interpret import sanity
from cnn_jax.interpret.activation_maximization import activation_maximization, class_logit
from cnn_jax.interpret.grad_cam import grad_cam
from cnn_jax.interpret.integrated_gradients import integrated_gradients
from cnn_jax.interpret.saliency import saliency
from cnn_jax.interpret.smoothgrad import smoothgrad
from cnn_jax.interpret.taps import conv_layers, sown_layers
from cnn_jax.plots import interpret as plots
from cnn_jax.plots import sanity as sanity_plots

ATTRIBUTIONS, FILTERS, FEATURE_MAPS, CLASSES = ("attributions.png", "filters.png", "feature_maps.png",
                                                "class_visualizations.png")
INDEX, SANITY = "index.html", "sanity.html"
SANITY_MAPS, SANITY_CURVES, SANITY_JSON = "sanity_maps.png", "sanity_curves.png", "sanity.json"
PAGES = {SANITY: "Sanity checks: do the maps depend on the weights and the labels?"}


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
    for i, (label, prediction, p) in enumerate(zip(labels, predictions, confidence)):
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
    attributions = dict(zip(("saliency", "SmoothGrad", "Integrated Gradients", f"Grad-CAM ({layer})"), maps))
    if logits.shape[-1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for a model with {logits.shape[-1]} classes")
    predictions = np.asarray(jnp.argmax(logits, axis=-1))
    confidence = np.asarray(jax.nn.softmax(logits)).max(axis=-1)
    titles = [f"{class_names[p]} {c:.2f}" + ("" if p == t else f" (true {class_names[t]})")
              for p, c, t in zip(predictions, confidence, labels)]
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
    pages = [f"<li><a href=\"{name}\">{html.escape(text)}</a></li>" for name, text in PAGES.items()
             if (out_dir / name).exists()]
    if pages:
        sections.append(("More pages", "<ul>" + "".join(pages) + "</ul>"))
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
    if (out_dir / INDEX).exists():
        sections.append(("Gallery", f"<p><a href=\"{INDEX}\">the rest of the gallery</a></p>"))
    page = out_dir / SANITY
    page.write_text(_page(title, sections))
    return page
