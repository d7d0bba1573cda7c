"""Tests of cnn_jax.evaluation (confusion matrix maths) and cnn_jax.plots (PNG figures)."""
import matplotlib.image
import numpy as np
import pytest
from helpers import examples
from hypothesis import given
from hypothesis import strategies as st

from cnn_jax import evaluation, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ("cat", "dog", "bird")


# ---- evaluation ----

@examples(30)
@given(num_classes=st.integers(1, 8), n=st.integers(0, 60), seed=st.integers(0, 2**16))
def test_confusion_matrix_counts_labels_predictions_and_hits(num_classes, n, seed):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)
    confusion = evaluation.confusion_matrix(labels, predictions, num_classes)
    assert confusion.shape == (num_classes, num_classes) and confusion.sum() == n
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=num_classes))
    np.testing.assert_array_equal(confusion.sum(axis=0), np.bincount(predictions, minlength=num_classes))
    assert np.trace(confusion) == np.sum(labels == predictions)


def test_confusion_matrix_places_true_in_rows_and_predicted_in_columns():
    confusion = evaluation.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 0], 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 0], [2, 0, 1]])


def test_per_class_accuracy_is_recall_and_nan_for_absent_classes():
    accuracy = evaluation.per_class_accuracy(np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
    np.testing.assert_allclose(accuracy[[0, 2]], [0.75, 0.5])
    assert np.isnan(accuracy[1])


@pytest.mark.parametrize("labels, predictions, message", [
    ([0, 3], [0, 1], "labels must be in"),
    ([0, 1], [0, -1], "predictions must be in"),
    ([0, 1], [0.0, 1.0], "argmax"),
    ([0, 1], [0], "equal length"),
])
def test_confusion_matrix_rejects_bad_input(labels, predictions, message):
    with pytest.raises(ValueError, match=message):
        evaluation.confusion_matrix(np.array(labels), np.array(predictions), 3)


# ---- figures ----

def _read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    assert pixels[..., :3].std() > 0.05  # something is drawn
    return pixels[..., :3]


def _red_pixels(pixels):
    return np.sum((pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35))


def test_training_curves_tolerate_missing_keys(tmp_path):
    records = [{"step": s, "epoch": s / 10, "train_loss": 2 / s, "train_accuracy": 1 - 1 / s} for s in range(1, 31)]
    records += [{"step": 10 * e, "epoch": e, "val_accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    records.append({"step": 30, "epoch": 3, "test_accuracy": 0.8})
    path = plots.plot_training_curves(records, tmp_path / "nested" / "curves.png")
    assert path == tmp_path / "nested" / "curves.png"
    _read_png(path)
    by_step = plots.plot_training_curves([{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.5}],
                                         tmp_path / "steps.png")
    _read_png(by_step)
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_training_curves([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="loss"):
        plots.plot_training_curves([{"step": 1, "lr": 0.1}], tmp_path / "no_metrics.png")


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_figure(tmp_path, normalize):
    confusion = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    _read_png(plots.plot_confusion_matrix(confusion, NAMES, tmp_path / "cm.png", normalize=normalize))
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion_matrix(confusion, NAMES[:2], tmp_path / "bad.png")


def test_per_class_accuracy_figure_takes_a_sequence_or_a_dict(tmp_path):
    _read_png(plots.plot_per_class_accuracy([0.9, np.nan, 0.4], NAMES, tmp_path / "seq.png"))
    _read_png(plots.plot_per_class_accuracy({"cat": 0.9, "dog": 0.2}, None, tmp_path / "dict.png"))
    with pytest.raises(ValueError, match="bird"):
        plots.plot_per_class_accuracy({"cat": 0.9}, NAMES[::2], tmp_path / "missing.png")
    with pytest.raises(ValueError, match="class_names"):
        plots.plot_per_class_accuracy([0.9], None, tmp_path / "none.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_prediction_grid_marks_mistakes_in_red(tmp_path, channels):
    rng = np.random.default_rng(0)
    gray = rng.random((12, 10, 10, 1)).astype(np.float32)
    images = np.repeat(gray, channels, axis=-1)  # gray pixels either way, so any red is a title
    labels = np.arange(12) % 3
    right = _read_png(plots.plot_prediction_grid(images, labels, labels, NAMES, tmp_path / "right.png"))
    wrong = _read_png(plots.plot_prediction_grid(images, labels, (labels + 1) % 3, NAMES, tmp_path / "wrong.png"))
    assert _red_pixels(right) == 0 and _red_pixels(wrong) > 100
    few = _read_png(plots.plot_prediction_grid(images, labels, labels, NAMES, tmp_path / "few.png", max_images=4))
    assert few.shape[0] < right.shape[0]  # a 2x2 grid is smaller than a 4x3 one
    with pytest.raises(ValueError, match="NHWC"):
        plots.plot_prediction_grid(images[..., 0], labels, labels, NAMES, tmp_path / "bad.png")
